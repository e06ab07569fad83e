// Live preview of the Adaptive Card typed as JSON on the compose form, rendered by
// Microsoft's own renderer (vendored), so what you see is what Teams will draw. A file, not
// inline script: the page's CSP forbids inline script.
(() => {
  const input = document.getElementById("adaptive-card");
  const preview = document.getElementById("card-preview");
  const problem = document.getElementById("card-preview-error");
  if (!input || !preview || !problem || !window.AdaptiveCards) return;

  function say(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  function render() {
    preview.replaceChildren();
    const text = input.value.trim();
    if (!text) return say("");
    let json;
    try {
      json = JSON.parse(text);
    } catch (e) {
      return say("Not valid JSON: " + e.message);
    }
    if (!json || json.type !== "AdaptiveCard") {
      return say('Not an Adaptive Card: its "type" must be "AdaptiveCard".');
    }
    const card = new AdaptiveCards.AdaptiveCard();
    // A click in the preview must not navigate or submit anything.
    card.onExecuteAction = () => say("");
    try {
      card.parse(json);
      const rendered = card.render();
      if (rendered) preview.appendChild(rendered);
      say("");
    } catch (e) {
      say("Not an Adaptive Card: " + e.message);
    }
  }

  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(render, 150);
  });
  render();
})();
