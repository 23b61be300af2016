(function () {
  "use strict";
  var root = document.documentElement;
  var box = document.getElementById("only-problems");
  if (box) {
    box.disabled = false;
    box.addEventListener("change", function () {
      document.body.classList.toggle("only-problems", box.checked);
    });
  }
  root.setAttribute("data-js", "ready");
})();
