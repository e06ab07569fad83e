// Goes on to the link at once. The Connect form posts to us and we answer with this page
// rather than a redirect: browsers hold a form's redirects to the CSP's form-action
// ('self'), which Microsoft's sign-in is not. Without script, the link is one click.
const link = document.getElementById("follow");
if (link) location.replace(link.href);
