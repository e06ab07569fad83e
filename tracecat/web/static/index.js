// The connect page. The key stays in this tab only (sessionStorage) and goes out only in the
// Authorization header. Served as a file, not inline, so the page's CSP can forbid inline script.
const keyInput = document.getElementById("api-key");
const statusBox = document.getElementById("status");
keyInput.value = sessionStorage.getItem("tracecat-api-key") || "";
keyInput.addEventListener("change", () => sessionStorage.setItem("tracecat-api-key", keyInput.value.trim()));

// The API's errors name routes for scripts; a person reads what to press instead.
function inWords(status, detail) {
  const text = typeof detail === "string" ? detail : JSON.stringify(detail);
  if (status === 401 && /API key/.test(text)) {
    return "This API key is not valid (it may have been revoked). Paste a current key, or create one with: tracecat-integrations users create EMAIL";
  }
  return text.replace(/connect again at GET \S+/g, "press Connect to connect again")
    .replace(/^Microsoft Teams is not connected:.*/, "Microsoft Teams is not connected yet: press Connect.");
}

async function call(method, path) {
  const key = keyInput.value.trim();
  if (!key) throw new Error("Paste an API key first.");
  sessionStorage.setItem("tracecat-api-key", key);
  const response = await fetch(path, { method, headers: { Authorization: "Bearer " + key }, credentials: "same-origin" });
  const body = response.status === 204 ? null : await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(inWords(response.status, body.detail));
  return body;
}

function show(text, isError) {
  statusBox.textContent = text;
  statusBox.className = isError ? "error" : "";
}

async function showStatus() {
  try {
    const s = await call("GET", "/auth/integrations/microsoft/status");
    const who = s.account && (s.account.username || s.account.display_name);
    show(s.connected
      ? `Status: ${s.status}\nAccount: ${who || "unknown"}\nAccess token expires: ${s.expires_at}\nScopes: ${s.scopes.join(" ")}`
      : `Status: ${s.status}` + (s.status === "reauthorization_required"
        ? "\nMicrosoft no longer accepts this connection: press Connect to connect again."
        : "\nPress Connect to connect your Microsoft account."));
  } catch (e) { show(e.message, true); }
}

document.getElementById("connect").addEventListener("click", async () => {
  try {
    // Calling connect from this page sets the cookie that binds the sign-in to this browser.
    const { auth_url } = await call("GET", "/auth/integrations/microsoft/connect");
    const redirect = new URL(new URL(auth_url).searchParams.get("redirect_uri") || location.href);
    if (redirect.origin !== location.origin) {
      show(`Microsoft will return to ${redirect.origin}, but this page is ${location.origin}: open ${redirect.origin}/ instead, so the sign-in can finish in this browser.`, true);
      return;
    }
    location.assign(auth_url);
  } catch (e) { show(e.message, true); }
});
document.getElementById("refresh").addEventListener("click", showStatus);
document.getElementById("disconnect").addEventListener("click", async () => {
  try { await call("DELETE", "/auth/integrations/microsoft/disconnect"); show("Disconnected."); }
  catch (e) { show(e.message, true); }
});
if (keyInput.value) showStatus();
