// The Copy button next to a one-time secret: copies the field named by data-copy. A file,
// not inline script, so the page's CSP forbids inline script outright.
for (const button of document.querySelectorAll("button[data-copy]")) {
  button.addEventListener("click", async () => {
    const field = document.getElementById(button.dataset.copy);
    const status = document.getElementById("copy-status");
    try {
      await navigator.clipboard.writeText(field.value);
      status.textContent = "Copied.";
    } catch {
      // Clipboard access needs a secure context or permission: select it for Ctrl+C instead.
      field.select();
      status.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
    }
  });
}
