// The demo front end: plain JavaScript, no build step. It never sees a token: the browser sends
// portcullis' httpOnly cookies, and /auth/me says who is signed in.
(() => {
const $ = (sel) => document.querySelector(sel);

async function me() {
  const r = await fetch('/auth/me', { headers: { accept: 'application/json' } });
  return r.ok ? r.json() : null;
}

async function header() {
  const user = await me();
  $('#signin').hidden = !!user;
  $('#signed-in').hidden = !user;
  if (user) {
    $('#who').textContent = `${user.username} (${user.groups.join(', ')})`;
    const admin = user.groups.includes('admin');
    document.querySelectorAll('.admin-only').forEach((el) => { el.hidden = !admin; });
  }
  return user;
}

function show(kind, text) {
  const box = $('#message');
  if (!box) return;
  box.className = `message ${kind}`;
  box.textContent = text;
  box.hidden = false;
}

// API answers: 401 means the session ended (sign in again), 403 means not allowed.
async function api(method, path, body) {
  const r = await fetch(path, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (r.status === 401) {
    window.location = `/auth/login?return_to=${encodeURIComponent(location.pathname)}`;
    throw new Error('signed out');
  }
  const data = await r.json().catch(() => ({}));
  if (r.status === 403) throw new Error('You are not allowed to do that.');
  if (!r.ok) throw new Error(data.detail || data.message || `Request failed (${r.status}).`);
  return data;
}

function badge(status) {
  return `<span class="badge ${status}">${status}</span>`;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

window.demo = { $, me, header, show, api, badge, escapeHtml };
})();
