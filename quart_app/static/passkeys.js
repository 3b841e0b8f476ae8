// Passkeys (WebAuthn) on /login, /login/2fa and /account.
//
// A static file because the Content-Security-Policy allows no inline script.
// Each page part is found by its id; a page without it is left alone. What
// the server sends is shown as text only (textContent), never as HTML.
// While passkeys are off the server answers 404 on every route used here:
// the buttons are then hidden.
(function () {
  "use strict";

  var ROUTES = {
    loginOptions: "/api/webauthn/login/options",
    loginVerify: "/api/webauthn/login/verify",
    secondStep: "/api/login/2fa/webauthn",
    registerOptions: "/api/webauthn/register/options",
    registerVerify: "/api/webauthn/register/verify",
    credentials: "/api/webauthn/credentials",
  };
  var REAUTHENTICATE = "/reauthenticate?next=/account";
  var DEFAULT_NEXT = "/dashboard";
  // Options fetched when the page loads are used for a click within this long (the server keeps them 5 minutes).
  var OPTIONS_FRESH_MS = 60000;

  var TEXT = {
    unsupported: "This browser cannot use passkeys. Use your password, or another browser.",
    cannotAdd: "This browser cannot create passkeys: add one from another browser or device.",
    cancelled: "The passkey request was cancelled or timed out. Nothing happened; try again when you are ready.",
    cancelledSignIn:
      "The passkey request was cancelled or timed out, or no passkey for this site was chosen. " +
      "Try again, or log in with your password.",
    alreadyRegistered:
      "That passkey is already registered: this authenticator already holds a passkey for your account.",
    noAuthenticator: "No authenticator here can make or use a passkey for this site.",
    security: "Passkeys cannot be used from this address of the site.",
    constraint: "Your authenticator cannot check it is you (no PIN, fingerprint or face unlock set up).",
    aborted: "The passkey request was stopped.",
    network: "The server could not be reached. Check your connection and try again.",
    failed: "The passkey request failed. Try again.",
    working: "Follow your browser's prompt…",
    signingIn: "Signing you in…",
    mustConfirm: "To see and manage your passkeys, ",
    confirmLink: "confirm it is you",
    mustConfirmEnd: " first (your password again).",
  };

  var supported =
    typeof window.PublicKeyCredential === "function" &&
    !!navigator.credentials &&
    typeof navigator.credentials.create === "function" &&
    typeof navigator.credentials.get === "function";

  // -- talking to the server ------------------------------------------------------------------

  function ServerError(status, message) {
    this.name = "ServerError";
    this.status = status;
    this.message = message;
  }
  ServerError.prototype = Object.create(Error.prototype);
  ServerError.prototype.constructor = ServerError;

  // Same-origin JSON with the session cookie; the answer's JSON, or a ServerError with its "error".
  async function call(method, url, body) {
    var init = { method: method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ServerError(0, TEXT.network);
    }
    if (response.status === 204) {
      return null;
    }
    var data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) {
      var message = data && typeof data.error === "string" ? data.error : "The server refused (" + response.status + ").";
      throw new ServerError(response.status, message);
    }
    return data;
  }

  // -- base64url and the JSON forms of the options and of the credential ---------------------------

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < bytes.length; i += 1) {
      text += String.fromCharCode(bytes[i]);
    }
    return window.btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function fromBase64url(text) {
    var base64 = String(text).replace(/-/g, "+").replace(/_/g, "/");
    base64 += "=".repeat((4 - (base64.length % 4)) % 4);
    var binary = window.atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i += 1) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function descriptors(list) {
    return (list || []).map(function (item) {
      var descriptor = Object.assign({}, item);
      descriptor.id = fromBase64url(item.id);
      return descriptor;
    });
  }

  function creationOptions(json) {
    if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
      try {
        return PublicKeyCredential.parseCreationOptionsFromJSON(json);
      } catch (error) {
        // An option this browser's parser does not know: the converter below keeps it as it is.
      }
    }
    var options = Object.assign({}, json);
    options.challenge = fromBase64url(json.challenge);
    options.user = Object.assign({}, json.user, { id: fromBase64url(json.user.id) });
    if (json.excludeCredentials) {
      options.excludeCredentials = descriptors(json.excludeCredentials);
    }
    return options;
  }

  function requestOptions(json) {
    if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
      try {
        return PublicKeyCredential.parseRequestOptionsFromJSON(json);
      } catch (error) {
        // As for creationOptions.
      }
    }
    var options = Object.assign({}, json);
    options.challenge = fromBase64url(json.challenge);
    if (json.allowCredentials) {
      options.allowCredentials = descriptors(json.allowCredentials);
    }
    return options;
  }

  // Extension results may hold binary values (prf, largeBlob): those as base64url too.
  function plain(value) {
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
      return toBase64url(value instanceof ArrayBuffer ? value : value.buffer);
    }
    if (Array.isArray(value)) {
      return value.map(plain);
    }
    if (value && typeof value === "object") {
      var copy = {};
      Object.keys(value).forEach(function (key) {
        copy[key] = plain(value[key]);
      });
      return copy;
    }
    return value;
  }

  // What PublicKeyCredential.toJSON() gives, for a browser without it.
  function credentialJSON(credential) {
    if (typeof credential.toJSON === "function") {
      return credential.toJSON();
    }
    var answer = credential.response;
    var response = { clientDataJSON: toBase64url(answer.clientDataJSON) };
    if (answer.attestationObject) {
      response.attestationObject = toBase64url(answer.attestationObject);
      response.transports = typeof answer.getTransports === "function" ? answer.getTransports() : [];
      if (typeof answer.getAuthenticatorData === "function") {
        response.authenticatorData = toBase64url(answer.getAuthenticatorData());
      }
      if (typeof answer.getPublicKeyAlgorithm === "function") {
        response.publicKeyAlgorithm = answer.getPublicKeyAlgorithm();
      }
      var key = typeof answer.getPublicKey === "function" ? answer.getPublicKey() : null;
      if (key) {
        response.publicKey = toBase64url(key);
      }
    } else {
      response.authenticatorData = toBase64url(answer.authenticatorData);
      response.signature = toBase64url(answer.signature);
      if (answer.userHandle) {
        response.userHandle = toBase64url(answer.userHandle);
      }
    }
    var json = {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: response,
      clientExtensionResults:
        typeof credential.getClientExtensionResults === "function" ? plain(credential.getClientExtensionResults()) : {},
    };
    if (credential.authenticatorAttachment) {
      json.authenticatorAttachment = credential.authenticatorAttachment;
    }
    return json;
  }

  // -- messages -----------------------------------------------------------------------------------

  // A function that puts a message (text, or a list of text and elements) in the page's live region.
  function messenger(element) {
    return function say(message, kind) {
      if (!element) {
        return;
      }
      var parts = Array.isArray(message) ? message : [message || ""];
      element.replaceChildren.apply(element, parts);
      element.className = "passkey-message" + (message && kind ? " " + kind : "");
    };
  }

  // The words for what went wrong: the server's own "error", or the browser's refusal by its name.
  function explain(error, signingIn) {
    if (error instanceof ServerError) {
      return error.message;
    }
    switch (error && error.name) {
      case "NotAllowedError":
        return signingIn ? TEXT.cancelledSignIn : TEXT.cancelled;
      case "InvalidStateError":
        return TEXT.alreadyRegistered;
      case "NotSupportedError":
        return TEXT.noAuthenticator;
      case "SecurityError":
        return TEXT.security;
      case "ConstraintError":
        return TEXT.constraint;
      case "AbortError":
        return TEXT.aborted;
      default:
        return TEXT.failed;
    }
  }

  function setBusy(button, busy) {
    button.disabled = busy;
    if (busy) {
      button.setAttribute("aria-busy", "true");
    } else {
      button.removeAttribute("aria-busy");
    }
  }

  // ``target`` if it is a path on this site (not "//host" nor "/\host"), else the dashboard.
  function safeNext(target) {
    if (typeof target !== "string" || target.charAt(0) !== "/") {
      return DEFAULT_NEXT;
    }
    if (target.charAt(1) === "/" || target.charAt(1) === "\\" || /[\\\u0000-\u0020\u007f]/.test(target)) {
      return DEFAULT_NEXT;
    }
    return target;
  }

  function nextOfThisPage() {
    // The second step's page names where the pending login goes (its form has no next in the URL).
    var named = document.querySelector("[data-next]");
    if (named && named.getAttribute("data-next")) {
      return named.getAttribute("data-next");
    }
    return new URLSearchParams(window.location.search).get("next");
  }

  // Options fetched ahead, used once, and only while fresh.
  function OptionsCache() {
    this.options = null;
    this.fetchedAt = 0;
  }
  OptionsCache.prototype.keep = function (options) {
    this.options = options;
    this.fetchedAt = Date.now();
  };
  OptionsCache.prototype.take = function () {
    var options = this.options;
    var fresh = options !== null && Date.now() - this.fetchedAt < OPTIONS_FRESH_MS;
    this.options = null;
    return fresh ? options : null;
  };

  // -- /login: "Sign in with a passkey", and the passkeys offered in the username field's autofill ------------

  function initSignIn() {
    var box = document.getElementById("passkey-signin");
    var button = document.getElementById("passkey-signin-button");
    if (!box || !button || !supported) {
      return;
    }
    var say = messenger(document.getElementById("passkey-message"));
    var remember = document.querySelector('input[name="remember"]');
    var ahead = new OptionsCache();
    var conditional = null; // the AbortController of the autofill request while it waits
    var done = false;

    async function finish(credential) {
      say(TEXT.signingIn, "info");
      await call("POST", ROUTES.loginVerify, {
        credential: credentialJSON(credential),
        remember: !!(remember && remember.checked),
      });
      done = true;
      window.location.assign(safeNext(nextOfThisPage()));
    }

    async function autofill(options) {
      var controller = new AbortController();
      conditional = controller;
      var credential;
      try {
        credential = await navigator.credentials.get({
          mediation: "conditional",
          publicKey: requestOptions(options),
          signal: controller.signal,
        });
      } catch (error) {
        return; // stopped for the button, or nothing to offer: nothing to say
      } finally {
        if (conditional === controller) {
          conditional = null;
        }
      }
      if (!credential || done) {
        return;
      }
      try {
        await finish(credential);
      } catch (error) {
        say(explain(error, true), "error");
      }
    }

    button.addEventListener("click", async function () {
      if (conditional) {
        conditional.abort();
        conditional = null;
      }
      setBusy(button, true);
      say(TEXT.working, "info");
      try {
        var options = ahead.take() || (await call("POST", ROUTES.loginOptions, {}));
        var credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        await finish(credential);
      } catch (error) {
        if (error instanceof ServerError && error.status === 404) {
          box.hidden = true; // passkeys are off (the message says so)
        }
        say(explain(error, true), "error");
      } finally {
        if (!done) {
          setBusy(button, false);
        }
      }
    });

    (async function start() {
      var options;
      try {
        options = await call("POST", ROUTES.loginOptions, {});
      } catch (error) {
        if (!(error instanceof ServerError && error.status === 404)) {
          box.hidden = false; // the button fetches them again
        }
        return;
      }
      box.hidden = false;
      var available = false;
      if (typeof PublicKeyCredential.isConditionalMediationAvailable === "function") {
        try {
          available = await PublicKeyCredential.isConditionalMediationAvailable();
        } catch (error) {
          available = false;
        }
      }
      if (available) {
        autofill(options);
      } else {
        ahead.keep(options);
      }
    })();
  }

  // -- /login/2fa: "Use a passkey" for the pending login ------------------------------------------------------

  function initSecondStep() {
    var box = document.getElementById("passkey-2fa");
    var button = document.getElementById("passkey-2fa-button");
    if (!box || !button || !supported) {
      return;
    }
    var say = messenger(document.getElementById("passkey-message"));
    var ahead = new OptionsCache();
    var done = false;

    button.addEventListener("click", async function () {
      setBusy(button, true);
      say(TEXT.working, "info");
      try {
        var options = ahead.take() || (await call("POST", ROUTES.secondStep, {}));
        var credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
        say(TEXT.signingIn, "info");
        var answer = await call("POST", ROUTES.secondStep, { credential: credentialJSON(credential) });
        done = true;
        window.location.assign(safeNext((answer && answer.next) || nextOfThisPage()));
      } catch (error) {
        if (error instanceof ServerError && error.status === 404) {
          box.hidden = true;
        }
        say(explain(error, true), "error");
      } finally {
        if (!done) {
          setBusy(button, false);
        }
      }
    });

    (async function start() {
      var options;
      try {
        options = await call("POST", ROUTES.secondStep, {});
      } catch (error) {
        return; // 404: passkeys off; 401: no pending login (the page says so)
      }
      if (!options || !Array.isArray(options.allowCredentials) || options.allowCredentials.length === 0) {
        return; // this account has no passkey
      }
      ahead.keep(options);
      box.hidden = false;
    })();
  }

  // -- /account: the list, "Add a passkey", "Remove" ---------------------------------------------------------------

  var KEPT_MESSAGE = "passkeys.message";

  // A message for the page loaded next (this tab only); without storage, none.
  function keepMessage(text, kind) {
    try {
      window.sessionStorage.setItem(KEPT_MESSAGE, JSON.stringify({ text: text, kind: kind }));
    } catch (error) {
      // storage off: the list shows the new passkey all the same
    }
  }

  function keptMessage() {
    try {
      var kept = JSON.parse(window.sessionStorage.getItem(KEPT_MESSAGE) || "null");
      window.sessionStorage.removeItem(KEPT_MESSAGE);
      return kept && typeof kept.text === "string" ? kept : null;
    } catch (error) {
      return null;
    }
  }

  // "2025-01-31T12:34:56Z" as "2025-01-31 12:34 UTC".
  function when(iso) {
    var match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2})/.exec(iso || "");
    return match ? match[1] + " " + match[2] + " UTC" : String(iso);
  }

  function timeElement(iso) {
    var element = document.createElement("time");
    element.dateTime = iso;
    element.textContent = when(iso);
    return element;
  }

  function initAccount() {
    var section = document.getElementById("passkeys");
    var list = document.getElementById("passkey-list");
    var empty = document.getElementById("passkey-empty");
    var form = document.getElementById("passkey-add");
    var nameField = document.getElementById("passkey-name");
    var addButton = document.getElementById("passkey-add-button");
    if (!section || !list || !empty || !form || !nameField || !addButton) {
      return;
    }
    var say = messenger(document.getElementById("passkey-message"));
    var done = false;

    // Adding or removing one gives this session a new secret, and with it new CSRF tokens: the forms on this
    // page (log out, change password, revoke) need the page again, and so does its table of sessions (the
    // others are logged out). The message is shown there.
    function reloadSaying(text) {
      keepMessage(text, "success");
      done = true;
      window.location.assign("/account");
    }

    function reauthenticate() {
      window.location.assign(REAUTHENTICATE);
    }

    function render(passkeys) {
      var items = passkeys.map(function (passkey) {
        var item = document.createElement("li");
        item.className = "passkey";
        var about = document.createElement("div");
        var name = document.createElement("strong");
        name.className = "passkey-name";
        name.textContent = passkey.name;
        var meta = document.createElement("small");
        meta.className = "passkey-meta";
        meta.append("Added ", timeElement(passkey.created_at), " · ");
        if (passkey.last_used_at) {
          meta.append("last used ", timeElement(passkey.last_used_at));
        } else {
          meta.append("never used");
        }
        about.append(name, meta);
        var remove = document.createElement("button");
        remove.type = "button";
        remove.className = "secondary";
        var hint = document.createElement("span");
        hint.className = "visually-hidden";
        hint.textContent = " passkey " + passkey.name;
        remove.append("Remove", hint);
        remove.addEventListener("click", function () {
          removePasskey(passkey, remove);
        });
        item.append(about, remove);
        return item;
      });
      list.replaceChildren.apply(list, items);
      list.hidden = items.length === 0;
      empty.hidden = items.length !== 0;
    }

    async function load() {
      var passkeys;
      try {
        passkeys = await call("GET", ROUTES.credentials);
      } catch (error) {
        if (error instanceof ServerError && error.status === 404) {
          section.hidden = true; // passkeys are off
          return false;
        }
        section.hidden = false;
        list.hidden = true;
        empty.hidden = true;
        if (error instanceof ServerError && error.status === 401) {
          form.hidden = true;
          var link = document.createElement("a");
          link.href = REAUTHENTICATE;
          link.textContent = TEXT.confirmLink;
          say([TEXT.mustConfirm, link, TEXT.mustConfirmEnd], "info");
        } else {
          say(explain(error, false), "error");
        }
        return false;
      }
      render(Array.isArray(passkeys) ? passkeys : []);
      section.hidden = false;
      return true;
    }

    async function removePasskey(passkey, button) {
      if (done) {
        return;
      }
      setBusy(button, true);
      try {
        await call("DELETE", ROUTES.credentials + "/" + encodeURIComponent(passkey.id));
      } catch (error) {
        setBusy(button, false);
        if (error instanceof ServerError && error.status === 401) {
          reauthenticate();
          return;
        }
        say(explain(error, false), "error");
        if (error instanceof ServerError && error.status === 404) {
          await load(); // gone already (or passkeys turned off)
        }
        return;
      }
      reloadSaying("Passkey “" + passkey.name + "” removed. Your other sessions were logged out.");
    }

    if (!supported) {
      addButton.disabled = true;
      say(TEXT.cannotAdd, "info");
    }

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      if (!supported) {
        say(TEXT.cannotAdd, "error");
        return;
      }
      setBusy(addButton, true);
      say(TEXT.working, "info");
      try {
        var options = await call("POST", ROUTES.registerOptions, {});
        var credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
        var name = nameField.value.trim();
        var added = await call("POST", ROUTES.registerVerify, {
          credential: credentialJSON(credential),
          name: name || null,
        });
        reloadSaying("Passkey “" + added.name + "” added. Your other sessions were logged out.");
      } catch (error) {
        if (error instanceof ServerError && error.status === 401) {
          reauthenticate();
          return;
        }
        if (error instanceof ServerError && error.status === 404) {
          section.hidden = true;
          return;
        }
        say(explain(error, false), "error");
      } finally {
        if (!done) {
          setBusy(addButton, false);
        }
      }
    });

    var kept = keptMessage();
    if (kept) {
      say(kept.text, kept.kind);
    }
    load();
  }

  initSignIn();
  initSecondStep();
  initAccount();
})();
