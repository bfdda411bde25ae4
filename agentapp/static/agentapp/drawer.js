/**
 * drawer.js: on a narrow screen the sidebar (conversations, New conversation, Log in) is a drawer.
 *
 * The menu button opens it and says so with aria-expanded; Escape, the close button or a tap on the backdrop close
 * it. While it is open the rest of the page is inert, so focus stays in the drawer; closing returns focus to the
 * menu button. At desktop width the sidebar is always shown and none of this applies.
 */

/** Matches when the sidebar is a drawer; keep in step with the @media rule in chat.css. */
const NARROW = "(max-width: 700px)";

export class Drawer {
  /** @param {HTMLElement} root the #agentapp element */
  constructor(root) {
    this.root = root;
    this.sidebar = document.getElementById("sidebar");
    this.toggle = document.getElementById("menu-toggle");
    this.closeButton = document.getElementById("drawer-close");
    this.backdrop = document.getElementById("drawer-backdrop");
    this.main = root.querySelector("main");
    this.narrow = window.matchMedia(NARROW);
    this.toggle.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    this.closeButton.addEventListener("click", () => this.close());
    this.backdrop.addEventListener("click", () => this.close());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.isOpen) this.close();
    });
    this.narrow.addEventListener("change", () => this.close(false)); // a wide screen shows the sidebar anyway
  }

  get isOpen() {
    return this.root.dataset.drawer === "open";
  }

  open() {
    if (!this.narrow.matches) return;
    this.root.dataset.drawer = "open";
    this.toggle.setAttribute("aria-expanded", "true");
    this.backdrop.hidden = false;
    this.main.inert = true;
    // The current conversation's link, or the first thing in the drawer.
    const current = this.sidebar.querySelector("a[aria-current]");
    (current || this.sidebar.querySelector("a, button")).focus();
  }

  /** Close the drawer; focus goes back to the menu button unless ``restoreFocus`` is false. */
  close(restoreFocus = true) {
    if (!this.isOpen) return;
    delete this.root.dataset.drawer;
    this.toggle.setAttribute("aria-expanded", "false");
    this.backdrop.hidden = true;
    this.main.inert = false;
    if (restoreFocus) this.toggle.focus();
  }
}
