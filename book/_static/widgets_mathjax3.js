/* The ipywidgets embed script (vendor/html-manager/embed.js) typesets widget labels with
 * MathJax 2's call, MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). This site runs
 * MathJax 3, which has no MathJax.Hub, so every widget logged a TypeError. This gives
 * whatever object is window.MathJax (the configuration first, then MathJax 3 itself, which
 * replaces it when it loads) that one call, carried out by MathJax 3's typesetPromise. */
(function () {
  "use strict";
  var waiting = [];

  function typeset(element) {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && mathjax.startup.promise && mathjax.typesetPromise) {
      mathjax.startup.promise
        .then(function () { return mathjax.typesetPromise([element]); })
        .catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
    } else {
      waiting.push(element);   // MathJax 3 has not started yet
    }
  }

  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var command = arguments[i];
        if (Array.isArray(command) && command[0] === "Typeset" && command[2]) typeset(command[2]);
      }
    }
  };

  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) {
      Object.defineProperty(value, "Hub", { value: hub, enumerable: false, configurable: true });
    }
    return value;
  }

  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    enumerable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }
  });

  window.addEventListener("load", function () {
    var pending = waiting;
    waiting = [];
    pending.forEach(typeset);
  });
})();
