// DOM helpers shared by the chat page's modules.

/** A new element with an optional class and text content (set as text, never as HTML). */
export function node(tag, className, text) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== undefined) element.textContent = text;
  return element;
}
