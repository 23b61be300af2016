(function () {
  "use strict";
  var root = document.documentElement;
  var box = document.getElementById("only-problems");
  function apply() {
    document.body.classList.toggle("only-problems", box.checked);
  }
  if (box) {
    box.disabled = false;
    box.checked = box.checked || window.location.hash === "#problems";
    box.addEventListener("change", apply);
    apply();
  }
  root.setAttribute("data-js", "ready");
})();
