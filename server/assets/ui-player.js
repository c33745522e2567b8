// Starts asciinema-player on every element with a `data-cast` attribute
// (the page's CSP allows no inline script, so the page says what to play
// in data attributes and this file plays it).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-cast]").forEach(function (el) {
    var speed = parseFloat(el.dataset.speed || "1");
    window.AsciinemaPlayer.create(el.dataset.cast, el, {
      speed: speed > 0 ? speed : 1,
      autoPlay: true,
      idleTimeLimit: 2,
      fit: "width",
      controls: true,
    });
  });
});
