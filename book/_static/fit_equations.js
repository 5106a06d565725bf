/* Wide display equations: shrink each one that is wider than the text column until it fits,
 * down to MIN_SCALE (70 %) of its size; past that it scrolls sideways (book.css). Runs once MathJax 3
 * has typeset the page, and again when the window is resized. */
(function () {
  "use strict";
  var MIN_SCALE = 0.7;

  function fit() {
    document.querySelectorAll('mjx-container[display="true"]').forEach(function (eq) {
      if (eq.dataset.fitFontSize === undefined) eq.dataset.fitFontSize = eq.style.fontSize || "";
      eq.style.fontSize = eq.dataset.fitFontSize;
      var scale = eq.clientWidth / eq.scrollWidth;
      if (!(scale < 1)) return;
      scale = Math.max(MIN_SCALE, Math.floor(scale * 100) / 100);
      var base = parseFloat(eq.dataset.fitFontSize) || 100;   // MathJax may set a percentage
      eq.style.fontSize = (base * scale).toFixed(1) + "%";
      eq.classList.add("fitted-equation");
    });
  }

  function whenTypeset() {
    var mathjax = window.MathJax;
    if (mathjax && mathjax.startup && mathjax.startup.promise) {
      mathjax.startup.promise.then(fit);
    }
  }

  window.addEventListener("load", whenTypeset);
  var timer = null;
  window.addEventListener("resize", function () {
    clearTimeout(timer);
    timer = setTimeout(fit, 200);
  });
})();
