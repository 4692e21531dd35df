// Passkeys on portcullis' hosted pages: the only script they load. A button with
// data-passkey="register" | "sign-in" | "second-factor" runs one WebAuthn ceremony: it asks the
// server for options (POST data-begin), calls the browser's WebAuthn API, and sends the answer
// (POST data-finish) with the form's hidden fields (csrf, request, ticket). Binary fields travel
// as base64url, which is what the server's webauthn-rs reads and writes.
"use strict";
(function () {
  const b64url = {
    decode(s) {
      const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
      return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
    },
    encode(buf) {
      let s = "";
      for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
      return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    },
  };

  function creationOptions(o) {
    const pk = o.publicKey;
    pk.challenge = b64url.decode(pk.challenge);
    pk.user.id = b64url.decode(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => (c.id = b64url.decode(c.id)));
    // Discoverable, so the passkey can also sign in without a username.
    pk.authenticatorSelection = Object.assign({}, pk.authenticatorSelection, {
      residentKey: "required",
      requireResidentKey: true,
    });
    return o;
  }

  function requestOptions(o) {
    const pk = o.publicKey;
    pk.challenge = b64url.decode(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => (c.id = b64url.decode(c.id)));
    delete o.mediation;
    return o;
  }

  function registration(cred) {
    return {
      id: cred.id,
      rawId: b64url.encode(cred.rawId),
      type: cred.type,
      extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: {
        attestationObject: b64url.encode(cred.response.attestationObject),
        clientDataJSON: b64url.encode(cred.response.clientDataJSON),
        transports: cred.response.getTransports ? cred.response.getTransports() : undefined,
      },
    };
  }

  function assertion(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: b64url.encode(cred.rawId),
      type: cred.type,
      extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: {
        authenticatorData: b64url.encode(r.authenticatorData),
        clientDataJSON: b64url.encode(r.clientDataJSON),
        signature: b64url.encode(r.signature),
        userHandle: r.userHandle ? b64url.encode(r.userHandle) : null,
      },
    };
  }

  async function post(url, fields) {
    const body = new URLSearchParams(fields);
    const resp = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body,
    });
    const json = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(json.message || "The passkey could not be used. Try again.");
    return json;
  }

  async function run(button) {
    const form = button.closest("form");
    const fields = {};
    for (const input of form.querySelectorAll("input[type=hidden], input[name=name]")) {
      fields[input.name] = input.value;
    }
    const status = document.getElementById(button.dataset.status || "passkey-status");
    const say = (text) => { if (status) { status.textContent = text; status.hidden = !text; } };
    say("");
    button.disabled = true;
    try {
      const begun = await post(button.dataset.begin, fields);
      let credential;
      if (button.dataset.passkey === "register") {
        const cred = await navigator.credentials.create(creationOptions(begun.options));
        credential = registration(cred);
      } else {
        const cred = await navigator.credentials.get(requestOptions(begun.options));
        credential = assertion(cred);
      }
      const done = await post(button.dataset.finish, Object.assign({}, fields, {
        ceremony: begun.ceremony,
        credential: JSON.stringify(credential),
      }));
      window.location.assign(done.location);
    } catch (e) {
      say(e && e.name === "NotAllowedError" ? "The passkey prompt was closed or timed out." : (e.message || String(e)));
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!window.PublicKeyCredential) return;
    for (const button of document.querySelectorAll("button[data-passkey]")) {
      button.hidden = false;
      button.addEventListener("click", (ev) => { ev.preventDefault(); run(button); });
    }
  });
})();
