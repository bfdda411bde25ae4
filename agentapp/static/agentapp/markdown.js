/**
 * markdown.js: assistant text rendered as Markdown (marked), then sanitized (DOMPurify) into a DOM fragment.
 *
 * The policy, whatever the model writes:
 * - Raw HTML in the Markdown is shown as text, never parsed: `<b>` reads "<b>".
 * - Only the tags Markdown produces survive sanitizing (no script, iframe, form, input, style, svg, img),
 *   with no attributes but href, title, align and start: no event handlers, no class, no style, no id.
 * - Links keep their href only when it is http(s) or mailto; they open in a new tab with rel="noopener noreferrer".
 * - Images are never loaded (a model's image URL could carry the conversation to a third party): an image
 *   becomes a link to its http(s) URL, labelled with its alt text, or just its alt text.
 * The result is a fragment inserted with replaceChildren: no innerHTML on the page's own elements.
 */
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const ALLOWED_TAGS = [
  "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre", "blockquote",
  "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
];
const ALLOWED_ATTR = ["href", "title", "align", "start"];
const SAFE_URL = /^(?:https?:|mailto:)/i;
const WEB_URL = /^https?:/i;

/** Text escaped for HTML (text content and attribute values). */
function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  breaks: true, // a single newline is a line break, as models mean it (and as plain text showed it)
  renderer: {
    /** Raw HTML, block or inline, shown as the text it is. */
    html({ text, block }) {
      const escaped = escapeHtml(text);
      return block ? `<p>${escaped.replace(/\n/g, "<br>")}</p>` : escaped;
    },
    /** An image as a link to it (never an <img>): see the policy above. */
    image({ href, text }) {
      const label = escapeHtml(text || href || "image");
      return WEB_URL.test(String(href).trim()) ? `<a href="${escapeHtml(href)}">${label}</a>` : label;
    },
    /** A task list box as a character: no form controls in model output. */
    checkbox({ checked }) {
      return checked ? "☑ " : "☐ ";
    },
  },
});

// An instance of our own, so its hook and settings touch no other DOMPurify user on the page.
const purify = DOMPurify(window);
purify.addHook("afterSanitizeAttributes", (element) => {
  if (element.tagName !== "A") return;
  const href = element.getAttribute("href");
  if (href === null || !SAFE_URL.test(href.trim())) {
    element.removeAttribute("href");
    return;
  }
  element.setAttribute("target", "_blank");
  element.setAttribute("rel", "noopener noreferrer");
});

const SANITIZE = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  KEEP_CONTENT: true, // a removed tag's text stays, as text
  RETURN_DOM_FRAGMENT: true,
};

/** Markdown source as a sanitized DocumentFragment. */
export function renderMarkdown(source) {
  return purify.sanitize(marked.parse(String(source)), SANITIZE);
}

/** One element showing Markdown that grows as it streams; render() redraws it from the whole source. */
export class MarkdownView {
  constructor(element) {
    this.element = element;
    this.source = "";
    this.rendered = 0; // source length at the last render
  }

  append(text) {
    this.source += text;
  }

  /** Whether text arrived since the last render. */
  get stale() {
    return this.rendered !== this.source.length;
  }

  render() {
    if (!this.stale) return;
    this.element.replaceChildren(renderMarkdown(this.source));
    this.rendered = this.source.length;
  }
}
