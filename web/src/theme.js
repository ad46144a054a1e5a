// How the editor looks: a quiet paper-like theme and Markdown highlighting that shows structure.

import { EditorView } from '@codemirror/view'
import { HighlightStyle, syntaxHighlighting } from '@codemirror/language'
import { tags } from '@lezer/highlight'

const MONO = 'ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace'
const SANS = 'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif'

export const editorTheme = EditorView.theme({
  '&': {
    height: '100%',
    fontSize: '15px',
    color: 'var(--text)',
    backgroundColor: 'var(--surface)'
  },
  '&.cm-focused': { outline: 'none' },
  '.cm-scroller': { fontFamily: MONO, lineHeight: '1.65', overflow: 'auto' },
  // Room above the first line for a remote caret's name label.
  '.cm-content': { padding: '28px 0 40vh', caretColor: 'var(--me, var(--accent))' },
  '.cm-line': { padding: '0 24px 0 12px' },
  '.cm-gutters': {
    backgroundColor: 'var(--surface)',
    color: 'var(--faint)',
    border: 'none',
    paddingLeft: '8px'
  },
  '.cm-lineNumbers .cm-gutterElement': { padding: '0 8px 0 4px', minWidth: '2.5ch', fontSize: '13px' },
  '.cm-activeLine': { backgroundColor: 'var(--active-line)' },
  '.cm-activeLineGutter': { backgroundColor: 'transparent', color: 'var(--muted)' },
  // My caret in my colour, as the others see it.
  '.cm-cursor, .cm-dropCursor': { borderLeftColor: 'var(--me, var(--accent))', borderLeftWidth: '2px' },
  '&.cm-focused > .cm-scroller > .cm-selectionLayer .cm-selectionBackground, .cm-selectionBackground, ::selection': {
    backgroundColor: 'var(--selection) !important'
  },
  '.cm-placeholder': { color: 'var(--faint)', fontStyle: 'italic' },
  // Remote carets (y-codemirror.next): names always shown, as a small tag in the person's colour.
  '.cm-ySelectionCaret': { borderLeftWidth: '2px', borderRightWidth: '0', marginLeft: '-1px', marginRight: '-1px' },
  '.cm-ySelectionCaretDot': { display: 'none' },
  '.cm-ySelectionInfo': {
    opacity: '1 !important',
    top: '-1.45em',
    left: '-2px',
    padding: '1px 6px',
    borderRadius: '4px 4px 4px 0',
    fontFamily: SANS,
    fontSize: '11px',
    fontWeight: '600',
    lineHeight: '1.4',
    whiteSpace: 'nowrap',
    boxShadow: '0 1px 2px rgb(0 0 0 / 0.2)'
  }
})

const markdownStyle = HighlightStyle.define([
  { tag: tags.heading1, fontSize: '1.45em', fontWeight: '700', color: 'var(--heading)' },
  { tag: tags.heading2, fontSize: '1.25em', fontWeight: '700', color: 'var(--heading)' },
  { tag: tags.heading3, fontSize: '1.1em', fontWeight: '700', color: 'var(--heading)' },
  { tag: [tags.heading4, tags.heading5, tags.heading6], fontWeight: '700', color: 'var(--heading)' },
  { tag: tags.strong, fontWeight: '700' },
  { tag: tags.emphasis, fontStyle: 'italic' },
  { tag: tags.strikethrough, textDecoration: 'line-through' },
  { tag: tags.link, color: 'var(--accent)' },
  { tag: tags.url, color: 'var(--muted)', textDecoration: 'underline' },
  { tag: tags.monospace, color: 'var(--code)', backgroundColor: 'var(--code-bg)', borderRadius: '3px' },
  { tag: tags.quote, color: 'var(--muted)', fontStyle: 'italic' },
  { tag: [tags.processingInstruction, tags.meta, tags.contentSeparator], color: 'var(--faint)' },
  { tag: [tags.labelName, tags.string], color: 'var(--code)' },
  { tag: tags.comment, color: 'var(--faint)' }
])

export const markdownHighlighting = syntaxHighlighting(markdownStyle)
