// The dashboard's index: the searches this user may see, refreshed every 5 s.
"use strict";
(function () {
  var root = document.getElementById("root"), message = document.getElementById("message");
  function cell(row, text, cls) { var td = document.createElement("td"); td.textContent = text;
    if (cls) td.className = cls; row.appendChild(td); return td; }
  function draw(runs) {
    while (root.firstChild) root.removeChild(root.firstChild);
    if (!runs.length) { root.textContent = "No tuning runs yet: a CirrusTuneOperator task registers its search here.";
      return; }
    var table = document.createElement("table"); table.id = "runs";
    var head = document.createElement("tr");
    ["search", "DAG", "run", "state", "configurations", "best", "cost", "started"].forEach(function (h) {
      var th = document.createElement("th"); th.textContent = h; head.appendChild(th); });
    table.appendChild(head);
    runs.forEach(function (run) {
      var row = document.createElement("tr"); row.setAttribute("data-run", run.key);
      var link = document.createElement("a"); link.href = "runs/" + run.key; link.textContent = run.task_id;
      cell(row, "").appendChild(link);
      cell(row, run.dag_id); cell(row, run.run_id);
      cell(row, "").appendChild(Object.assign(document.createElement("span"),
        {className: "status " + run.state, textContent: run.state}));
      cell(row, Object.keys(run.statuses).map(function (k) { return run.statuses[k] + " " + k.replace("_", " "); })
        .join(", "));
      cell(row, run.best === null ? "–" : run.metric + " " + run.best.toFixed(4), "num");
      cell(row, "$" + Number(run.cost_total_usd).toPrecision(3), "num");
      cell(row, new Date(run.registered_at * 1000).toLocaleString());
      table.appendChild(row);
    });
    root.appendChild(table);
  }
  function poll() {
    fetch("api/runs", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { location.reload(); throw new Error("the session has ended"); }  // to the login
        if (!r.ok) throw new Error(r.status + " " + r.statusText);
        return r.json();
      })
      .then(function (runs) { message.textContent = ""; message.className = ""; draw(runs); })
      .catch(function (e) { message.textContent = "could not load the tuning runs: " + e.message;
                            message.className = "error"; })
      .finally(function () { setTimeout(poll, 5000); });
  }
  poll();
})();
