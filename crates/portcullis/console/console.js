// The portcullis console: a page over the admin API, same origin, with the browser's session
// cookie (the gateway authorizes every call with the policies and checks the Origin of writes).
"use strict";
(function () {
  const api = document.querySelector("meta[name=portcullis-api]").content;
  const $ = (id) => document.getElementById(id);
  let etag = null;

  function say(text) { $("status").textContent = text || ""; }

  async function call(method, path, body, headers) {
    const init = { method, credentials: "same-origin", headers: Object.assign({}, headers || {}) };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(api + path, init);
    const text = await r.text();
    const data = text ? JSON.parse(text) : null;
    if (!r.ok) throw new Error((data && (data.detail || data.message || data.error)) || ("HTTP " + r.status));
    return { data, response: r };
  }

  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }

  // A button that acts on the second press ("Really ...?"), for what cannot be undone.
  function confirmButton(label, className, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = label;
    let armed = false;
    b.addEventListener("click", () => {
      if (!armed) { armed = true; b.textContent = "Really " + label.toLowerCase() + "?"; return; }
      act(action);
    });
    b.addEventListener("blur", () => { armed = false; b.textContent = label; });
    return b;
  }

  let usersQuery = "";
  let usersNext = null;

  // A page of users; `more` appends the next page to the table.
  async function loadUsers(q, more) {
    if (!more) usersQuery = q || "";
    const after = more && usersNext ? "&after=" + encodeURIComponent(usersNext) : "";
    const { data } = await call("GET", "/users?limit=100" + (usersQuery ? "&q=" + encodeURIComponent(usersQuery) : "") + after);
    usersNext = data.next;
    $("more-users").hidden = !data.next;
    const body = $("users");
    if (!more) body.replaceChildren();
    for (const u of data.items) {
      const tr = document.createElement("tr");
      tr.dataset.username = u.username;
      cell(tr, u.username); cell(tr, u.email || ""); cell(tr, u.status); cell(tr, u.groups.join(", "));
      const td = document.createElement("td");
      const b = document.createElement("button");
      b.type = "button";
      const enable = u.status === "disabled";
      b.textContent = (enable ? "Enable " : "Disable ") + u.username;
      b.className = enable ? "enable" : "disable";
      b.addEventListener("click", () => act(async () => {
        await call("POST", "/users/" + encodeURIComponent(u.username) + (enable ? "/enable" : "/disable"));
        await loadUsers(usersQuery);
      }));
      td.appendChild(b);
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  async function loadPolicies() {
    const { data, response } = await call("GET", "/policies");
    etag = response.headers.get("etag");
    loadMatrix().catch((err) => say(err.message));
    $("policy-version").textContent = String(data.version);
    $("policy-doc").value = data.document;
    const versions = (await call("GET", "/policies/versions")).data.items;
    const list = $("versions");
    list.replaceChildren();
    for (const v of versions) {
      const li = document.createElement("li");
      li.textContent = "v" + v.version + " — " + (v.comment || "(no comment)") + " ";
      if (v.version !== data.version) {
        const d = document.createElement("button");
        d.type = "button";
        d.textContent = "Diff v" + v.version + " → current";
        d.className = "diff";
        d.dataset.version = String(v.version);
        d.addEventListener("click", () => act(async () => {
          const r = (await call("GET", "/policies/diff?from=" + v.version + "&to=" + data.version)).data;
          $("diff").textContent = r.removed.map((l) => "- " + l).concat(r.added.map((l) => "+ " + l)).join("\n") || "(no difference)";
        }));
        li.appendChild(d);
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = "Roll back to v" + v.version;
        b.className = "rollback";
        b.dataset.version = String(v.version);
        b.addEventListener("click", () => act(async () => {
          await call("POST", "/policies/rollback", { version: v.version }, { "if-match": etag });
          await loadPolicies();
          say("rolled back to v" + v.version);
        }));
        li.appendChild(b);
      }
      list.appendChild(li);
    }
  }

  async function loadMatrix() {
    const { data } = await call("GET", "/policies/matrix");
    const head = $("matrix-head");
    head.replaceChildren();
    for (const title of ["route"].concat(data.principals)) {
      const th = document.createElement("th");
      th.textContent = title;
      head.appendChild(th);
    }
    const rows = $("matrix-rows");
    rows.replaceChildren();
    for (const r of data.rows) {
      const tr = document.createElement("tr");
      cell(tr, r.route);
      for (const d of r.decisions) cell(tr, d);
      rows.appendChild(tr);
    }
  }

  function items(id, list, text) {
    const ul = $(id);
    ul.replaceChildren();
    for (const x of list) {
      const li = document.createElement("li");
      li.textContent = text(x);
      ul.appendChild(li);
    }
  }

  async function loadGroups() {
    const { data } = await call("GET", "/groups?limit=500");
    const body = $("groups");
    body.replaceChildren();
    for (const g of data.items) {
      const tr = document.createElement("tr");
      tr.dataset.group = g.name;
      cell(tr, g.name); cell(tr, g.description); cell(tr, String(g.members));
      const td = document.createElement("td");
      td.appendChild(confirmButton("Delete " + g.name, "delete-group", async () => {
        await call("DELETE", "/groups/" + encodeURIComponent(g.name));
        await loadGroups();
        await loadUsers(usersQuery);
        say("deleted group " + g.name);
      }));
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  async function loadClients() {
    const { data } = await call("GET", "/clients?limit=500");
    const ul = $("clients");
    ul.replaceChildren();
    for (const c of data.items) {
      const li = document.createElement("li");
      li.dataset.client = c.client_id;
      li.textContent = c.client_id + " — " + c.name + " (" + c.grants.join(", ") + ")" + (c.declared ? " — declared in the configuration file" : "") + " ";
      if (!c.declared) {
        if (c.confidential) {
          li.appendChild(confirmButton("New secret for " + c.client_id, "rotate-secret", async () => {
            const { data: r } = await call("POST", "/clients/" + encodeURIComponent(c.client_id) + "/secret");
            $("client-secret").textContent = "New secret for " + r.client_id + " (shown once; the old one no longer works): " + r.client_secret;
            await loadClients();
          }));
        }
        li.appendChild(confirmButton("Delete " + c.client_id, "delete-client", async () => {
          await call("DELETE", "/clients/" + encodeURIComponent(c.client_id));
          await loadClients();
          say("deleted client " + c.client_id);
        }));
      }
      ul.appendChild(li);
    }
  }

  async function loadOps() {
    await loadClients();
    items("keys", (await call("GET", "/keys")).data, (k) => k.kid + " " + k.alg + " " + k.purpose + " " + k.state);
  }

  // Live sessions, newest first: one user's, or everyone's when no username is given.
  async function showSessions() {
    const user = $("sessions-user").value;
    const { data } = await call("GET", "/sessions?limit=200" + (user ? "&username=" + encodeURIComponent(user) : ""));
    const ul = $("sessions");
    ul.replaceChildren();
    for (const s of data.items) {
      const li = document.createElement("li");
      li.textContent = s.username + " signed in " + new Date(s.auth_time * 1000).toISOString() + " (" + s.amr.join(" ") + ") ";
      const b = document.createElement("button");
      b.type = "button";
      b.className = "end-session";
      b.textContent = "End this session of " + s.username;
      b.addEventListener("click", () => act(async () => {
        await call("DELETE", "/sessions/" + encodeURIComponent(s.sid));
        await showSessions();
      }));
      li.appendChild(b);
      ul.appendChild(li);
    }
    if (!data.items.length) ul.textContent = "No live sessions.";
  }

  let checkTimer = null;
  function checkPolicy() {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(() => act(async () => {
      const { data } = await call("POST", "/policies/validate", { document: $("policy-doc").value });
      $("policy-check").textContent = data.valid ? "Valid: " + data.documents + " documents." : data.error;
      $("policy-check").dataset.valid = String(data.valid);
      $("save-policy").disabled = !data.valid;
    }), 300);
  }

  let lastSeq = 0;
  function auditLine(e) {
    const li = document.createElement("li");
    li.textContent = new Date(e.at * 1000).toISOString() + " " + e.kind + " " + e.actor + " " + e.subject;
    return li;
  }

  // The newest 200 events, newest on top.
  async function loadAudit(kind) {
    const { data } = await call("GET", "/audit?order=desc&limit=200" + (kind ? "&kind=" + encodeURIComponent(kind) : ""));
    const list = $("audit");
    list.replaceChildren();
    for (const e of data.items) list.appendChild(auditLine(e));
    if (data.items.length) lastSeq = Math.max(lastSeq, data.items[0].seq);
  }

  // Following: new events every two seconds, newest on top.
  async function followAudit() {
    if (!$("audit-follow").checked) return;
    const kind = $("audit-kind").value;
    const { data } = await call("GET", "/audit?limit=1000&after=" + lastSeq + (kind ? "&kind=" + encodeURIComponent(kind) : ""));
    for (const e of data.items) $("audit").prepend(auditLine(e));
    if (data.items.length) lastSeq = data.items[data.items.length - 1].seq;
  }

  async function act(fn) {
    try { say(""); await fn(); } catch (err) { say(err.message); }
  }

  function submit(id, fn) {
    $(id).addEventListener("submit", (ev) => { ev.preventDefault(); act(fn); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    submit("search-users", () => loadUsers($("user-q").value));
    $("more-users").addEventListener("click", () => act(() => loadUsers(usersQuery, true)));
    submit("new-group", async () => {
      await call("POST", "/groups", { name: $("group-name").value, description: $("group-description").value });
      await loadGroups();
      say("created group " + $("group-name").value);
    });
    submit("new-user", async () => {
      const body = { username: $("new-username").value, invite: $("new-invite").checked };
      if ($("new-email").value) body.email = $("new-email").value;
      await call("POST", "/users", body);
      await loadUsers();
      say("created " + body.username);
    });
    const membership = async (method) => {
      const user = encodeURIComponent($("member-user").value);
      const group = encodeURIComponent($("member-group").value);
      await call(method, "/groups/" + group + "/members/" + user);
      await loadUsers(usersQuery);
      await loadGroups();
    };
    submit("membership", () => membership("PUT"));
    $("remove-member").addEventListener("click", () => act(() => membership("DELETE")));
    submit("policy-form", async () => {
      await call("PUT", "/policies", { document: $("policy-doc").value, comment: $("policy-comment").value }, { "if-match": etag });
      await loadPolicies();
      say("saved");
    });
    submit("explain", async () => {
      const body = { method: $("explain-method").value, path: $("explain-path").value };
      if ($("explain-user").value) body.user = $("explain-user").value;
      const { data } = await call("POST", "/policies/explain", body);
      $("explain-result").textContent = data.explanation;
      $("explain-result").dataset.allowed = String(data.allowed);
    });
    submit("audit-filter", () => loadAudit($("audit-kind").value));
    submit("sessions-form", showSessions);
    $("end-sessions").addEventListener("click", () => act(async () => {
      if (!$("sessions-user").value) throw new Error("name the user whose sessions end");
      await call("DELETE", "/users/" + encodeURIComponent($("sessions-user").value) + "/sessions");
      await showSessions();
    }));
    $("rotate-keys").addEventListener("click", () => act(async () => { await call("POST", "/keys/rotate"); await loadOps(); }));
    $("policy-doc").addEventListener("input", checkPolicy);
    setInterval(() => act(followAudit), 2000);
    submit("new-client", async () => {
      const machine = $("client-machine").checked;
      const body = {
        name: $("client-name").value,
        scopes: $("client-scopes").value.split(/\s+/).filter(Boolean),
        confidential: machine,
        grants: machine ? ["client_credentials"] : [],
      };
      if ($("client-id").value) body.client_id = $("client-id").value;
      const { data } = await call("POST", "/clients", body);
      $("client-secret").textContent = data.client_secret
        ? "Secret for " + data.client_id + " (shown once): " + data.client_secret
        : "Created " + data.client_id;
      await loadOps();
    });
    act(async () => { await loadUsers(); await loadGroups(); await loadPolicies(); await loadAudit(); await loadOps(); });
  });
})();
