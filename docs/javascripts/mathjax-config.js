// MathJax for pymdownx.arithmatex (generic mode); every component is in the bundled tex-svg-full.js, so
// nothing is fetched: the site renders its math offline.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
    enableMenu: false,
  },
  loader: { load: [] },
  startup: { typeset: true },
};
