// runbook serve: keeps a page of a live run up to date from the run's server-sent events
// (/runs/N/events). No library, no inline script (the Content-Security-Policy allows only this
// file). A page opts in on <body>: data-live="run" (the graph's boxes and the steps table) or
// data-live="log" with data-step and data-attempt (that attempt's lines), and data-run="N".
// Every text goes in as text (textContent), never as markup.
"use strict";
(function () {
  var body = document.body;
  var live = body.dataset.live;
  if (!live || !window.EventSource) {
    return;
  }
  var run = body.dataset.run;
  var source = new EventSource("/runs/" + encodeURIComponent(run) + "/events");

  // The state a step is in after an event about it, or null when the event changes none.
  function stateAfter(event) {
    switch (event.event) {
      case "step_started": return "running";
      case "step_done": return event.outcome;
      case "step_failed": return "failed";
      case "step_blocked": return "blocked";
      case "step_skipped": return "skipped";
      case "step_reset": return "pending";
      default: return null;
    }
  }

  function each(selector, step, then) {
    var found = document.querySelectorAll(selector);
    for (var i = 0; i < found.length; i++) {
      if (found[i].getAttribute("data-step") === step) {
        then(found[i]);
      }
    }
  }

  function showState(step, state) {
    each("svg.graph g.node", step, function (node) {
      node.setAttribute("class", "node s-" + state);
      var label = node.querySelector("text.state");
      if (label) {
        label.textContent = state;
      }
    });
    each("table.steps span.state", step, function (cell) {
      cell.className = "state s-" + state;
      cell.textContent = state;
    });
  }

  // Control characters shown as the server shows them (`\u{1b}`), so a line reads the same
  // live and after the run.
  function printable(text) {
    return String(text).replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
      function (c) { return "\\u{" + c.charCodeAt(0).toString(16) + "}"; });
  }

  var log = document.getElementById("log");
  source.onmessage = function (message) {
    var data = JSON.parse(message.data);
    var event = data.event;
    if (!event || typeof event.step !== "string") {
      return;
    }
    if (live === "run") {
      var state = stateAfter(event);
      if (state) {
        showState(event.step, state);
      }
    } else if (live === "log" && log && event.event === "step_log" && event.step === body.dataset.step &&
               String(event.attempt) === body.dataset.attempt) {
      log.appendChild(document.createTextNode(printable(event.line) + "\n"));
    }
  };
  // The run ended: the page as the server draws it now (durations, next actions), once.
  source.addEventListener("end", function () {
    source.close();
    if (live === "run") {
      window.location.reload();
    } else {
      body.setAttribute("data-ended", "true");
    }
  });
})();
