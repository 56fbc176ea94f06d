(function () {
  "use strict";
  var main = document.getElementById("live");
  var state = document.getElementById("live-state");
  var follow = state.getAttribute("data-follow");
  var version = state.getAttribute("data-version");
  var token = new URLSearchParams(location.search).get("token");
  function tick() {
    var headers = {};
    if (token) { headers["X-Xorb-Token"] = token; }
    fetch(follow, { headers: headers, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (d) {
        if (d.version !== version) {
          main.innerHTML = d.fragment;
          version = d.version;
          document.title = d.title;
        }
        state.textContent = "Live: updated " + new Date().toLocaleTimeString() +
          (d.finished ? " · this run has stopped (it may be resumed)" : "");
        setTimeout(tick, d.finished ? 3000 : 1000);
      })
      .catch(function (e) {
        state.textContent = "Connection to the dashboard lost (" + e.message + "); retrying…";
        setTimeout(tick, 2000);
      });
  }
  setTimeout(tick, 1000);
})();
