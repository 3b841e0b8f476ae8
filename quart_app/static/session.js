// Live session: the server closes this socket when the session ends anywhere
// (logout in another tab, password change, revocation, deactivation).
(function () {
  "use strict";
  var banner = document.getElementById("session-ended");
  if (!banner || !("WebSocket" in window)) { return; }
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var socket = new WebSocket(scheme + window.location.host + "/ws/session");
  socket.addEventListener("message", function (message) {
    var data = JSON.parse(message.data);
    if (data.event === "revoked") {
      banner.hidden = false;
      window.setTimeout(function () { window.location.assign("/login"); }, 1500);
    }
  });
})();
