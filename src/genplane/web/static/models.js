/* Copy buttons of the model page's examples. */
'use strict';
document.querySelectorAll('button.copy').forEach(function (button) {
  button.addEventListener('click', async function () {
    const source = document.getElementById(button.dataset.copy);
    if (!source) { return; }
    try {
      await navigator.clipboard.writeText(source.textContent);
      button.textContent = 'Copied';
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(source);
      const sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      button.textContent = 'Selected: press Ctrl+C';
    }
    setTimeout(function () { button.textContent = 'Copy'; }, 2000);
  });
});
