// mlcourse book: what a reader sees where a notebook displayed an ipywidget.
//
// The book shows stored outputs and runs no kernel. myst-nb writes each widget output as a
// <script type="application/vnd.jupyter.widget-view+json"> tag. When the notebook also stored
// its widget state, the ipywidgets HTML manager (loaded by myst-nb) draws the widget from that
// state. When it did not, the tag would render as nothing at all; this script puts a short note
// there instead, pointing at the launch button. Widgets whose state is on the page are left to
// the HTML manager.
(function () {
  "use strict";

  var VIEW = "application/vnd.jupyter.widget-view+json";
  var STATE = "application/vnd.jupyter.widget-state+json";

  function storedModelIds() {
    var ids = {};
    var tags = document.querySelectorAll('script[type="' + STATE + '"]');
    for (var i = 0; i < tags.length; i++) {
      try {
        var state = JSON.parse(tags[i].textContent).state || {};
        for (var id in state) {
          if (Object.prototype.hasOwnProperty.call(state, id)) ids[id] = true;
        }
      } catch (err) {
        // An unreadable state block counts as no state.
      }
    }
    return ids;
  }

  function placeholder() {
    var note = document.createElement("div");
    note.className = "mlcourse-widget-fallback";
    note.setAttribute("role", "note");
    note.textContent =
      "An interactive widget (such as a slider) appears here when the notebook runs. " +
      "Widgets need a running Python kernel: open this chapter in Colab with the rocket " +
      "icon at the top of the page and run its cells to use it.";
    return note;
  }

  function run() {
    var stored = storedModelIds();
    var views = document.querySelectorAll('script[type="' + VIEW + '"]');
    for (var i = 0; i < views.length; i++) {
      var tag = views[i];
      var modelId = null;
      try {
        modelId = JSON.parse(tag.textContent).model_id;
      } catch (err) {
        modelId = null;
      }
      if (modelId && stored[modelId]) continue; // the HTML manager draws this one
      if (tag.previousElementSibling &&
          tag.previousElementSibling.classList.contains("mlcourse-widget-fallback")) continue;
      tag.parentNode.insertBefore(placeholder(), tag);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
