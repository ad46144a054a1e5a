// A tiny element builder: h('a', { href: '/', class: 'brand' }, 'collab'). Text is always set as text, never HTML.

export function h (tag, attributes = {}, ...children) {
  const element = document.createElement(tag)
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value)
    else if (key === 'style' && typeof value === 'object') {
      for (const [property, setting] of Object.entries(value)) element.style.setProperty(property.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase()), setting)
    }
    else element.setAttribute(key, value === true ? '' : String(value))
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false))
  return element
}

/** Initials for an avatar: "Ada Lovelace" -> "AL", "grace" -> "G". */
export function initials (name) {
  const words = name.trim().split(/\s+/).filter(Boolean)
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words
  return letters.map((word) => [...word][0].toUpperCase()).join('') || '?'
}
