// Draws each chart of the page from the JSON figure the server rendered beside it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-figure]").forEach(function (element) {
    var figure = JSON.parse(document.getElementById(element.dataset.figure).textContent);
    Plotly.newPlot(element, figure.data, figure.layout, figure.config).then(function () {
      element.dataset.rendered = "true";
    });
  });
});
