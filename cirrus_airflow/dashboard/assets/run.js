// One search, live: its state every second, drawn by page.js, and the kill buttons' requests.
"use strict";
(function () {
  var key = document.body.getAttribute("data-key");
  var root = document.getElementById("root"), message = document.getElementById("message");
  var url = "../api/runs/" + key;
  var shownError = "";  // the search's own error (unreadable file), cleared when it reads again

  function say(text, error) { message.textContent = text; message.className = error ? "error" : ""; }

  function json(r) {
    if (r.status === 401) { location.reload(); throw new Error("the session has ended"); }  // to the login
    if (r.ok) return r.json();
    return r.json().catch(function () { return {}; }).then(function (body) {
      throw new Error(body.detail || (r.status + " " + r.statusText));
    });
  }

  // Returns the request, so that a button whose request failed can be pressed again.
  function kill(config) {
    return fetch(url + "/kill", {method: "POST", credentials: "same-origin",
                                 headers: {"Content-Type": "application/json"}, body: JSON.stringify({config: config})})
      .then(json)
      .then(function () { say("kill requested for " + (config || "every configuration")); })
      .catch(function (e) { say("could not kill: " + e.message, true); throw e; });
  }

  function poll() {
    fetch(url, {credentials: "same-origin", cache: "no-store"})
      .then(json)
      .then(function (state) {
        if (state.error) {
          say(state.error, true);
        } else if (shownError || message.textContent.indexOf("could not load") === 0) {
          say("");
        }
        shownError = state.error || "";
        CirrusPage.render(root, state, {onKill: state.can_kill ? kill : null});
        document.body.setAttribute("data-state", state.state);
        // A finished search stops here; an interrupted one may be retried, so it is watched slowly.
        if (state.state !== "done") setTimeout(poll, state.state === "interrupted" ? 5000 : 1000);
      })
      .catch(function (e) { say("could not load the search: " + e.message, true); setTimeout(poll, 3000); });
  }

  poll();
})();
