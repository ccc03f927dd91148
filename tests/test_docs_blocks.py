"""Every code block of README.md, docs/*.md and examples/README.md runs as its page says (see
tests/doc_runs.py for how each kind runs): a page that drifts from the code fails here, with the
block's page and line as the test's id (``docs/recipes.md:120``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from doc_blocks import all_blocks  # noqa: E402
from doc_runs import BlockFailed, Pages  # noqa: E402

BLOCKS = [block for block in all_blocks() if block.kind != "output"]


@pytest.fixture(scope="module")
def pages():
    opened = Pages()
    yield opened
    opened.close()


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_doc_block_runs(pages, block):
    try:
        pages.run(block)
    except BlockFailed as err:
        pytest.fail(str(err), pytrace=False)
    if block.skip:
        pytest.skip(block.skip)


# --- the machinery itself: how blocks are found, and that a drifted block fails ------------------

PAGE = """# A page

~~~python
x = 1
~~~

1. A list item:

   ```yaml
   schedule: {name: cosine}
   ```

````markdown
```python
not run: inside a longer fence
```
````

<!-- docs-test: setup
y = x + 1
-->
<!-- docs-test: skip (shown, not run) -->
```bash
traincraft fit missing.yaml
```

```
traincraft list losses
```

```
epoch 1/3  val_loss 0.5
```
"""


def test_blocks_are_found_with_their_line_kind_and_comments(tmp_path):
    from doc_blocks import page_blocks

    blocks = page_blocks(tmp_path / "page.md", PAGE)
    assert [(b.line, b.lang, b.kind) for b in blocks] == [
        (3, "python", "python"), (9, "yaml", "yaml"), (13, "markdown", "output"),
        (23, "bash", "shell"), (27, "", "shell"), (31, "", "output")]
    assert blocks[0].text == "x = 1\n" and blocks[1].text == "schedule: {name: cosine}\n"
    assert "not run" in blocks[2].text
    assert blocks[3].skip == "shown, not run" and blocks[3].setup == [(20, "y = x + 1\n")]
    assert all(b.skip is None and b.setup == [] for b in blocks[:3] + blocks[4:])


@pytest.mark.parametrize("comment, problem", [
    ("<!-- docs-test: skip -->", "write the skip's reason"),
    ("<!-- docs-test: skip () -->", "write the skip's reason"),
    ("<!-- docs-test: skip (why) -->\n\nsome prose\n", "goes right before its block"),
    ("<!-- docs-test: skip (why) -->\nprose, then `<!-- docs-test: skip (quoted) -->`\n",
     "goes right before its block"),
])
def test_a_skip_written_wrongly_is_a_failure(tmp_path, comment, problem):
    from doc_blocks import page_blocks

    (block,) = page_blocks(tmp_path / "page.md", f"{comment}\n```python\nx = 1\n```\n")
    assert problem in block.problem
    with pytest.raises(BlockFailed, match=problem):
        run_page(tmp_path, f"{comment}\n```python\nx = 1\n```\n")


def test_recipes_whole_partial_and_of_one_section():
    from doc_blocks import MINIMAL, Block, recipe_documents

    def recipes(text):
        return recipe_documents(Block("page.md", 1, "yaml", text))

    whole = "data: {dataset: wine}\nmodel: cnn\n"
    assert recipes(whole) == [{"data": {"dataset": "wine"}, "model": "cnn"}]
    assert recipes("loss: mse\n---\nloss: {name: huber}\n") == [
        {**MINIMAL, "loss": "mse"}, {**MINIMAL, "loss": {"name": "huber"}}]
    assert recipes("unfreeze: [{at: 2ep, params: [a]}]\n") == [
        {**MINIMAL, "finetune": {"unfreeze": [{"at": "2ep", "params": ["a"]}]}}]
    for text, message in [("logging: [csv]\nlogging: [csv]\n", "given twice"),
                          ("colour: blue\n", "'colour' is no recipe key"),
                          ("- a list\n", "not a recipe"), ("a: [\n", "YAML document 1")]:
        with pytest.raises(ValueError, match=message):
            recipes(text)


def run_page(folder, text, opened=None):
    """Run every block of a page written to ``folder``; BlockFailed for the first that fails.
    The page's folder and namespace: ``opened``'s, else removed at the end."""
    from doc_blocks import page_blocks

    path = folder / "page.md"
    path.write_text(text)
    own = opened is None
    opened = Pages() if own else opened
    try:
        for block in page_blocks(path):
            opened.run(block)
        return opened.pages.get(str(path))
    finally:
        if own:
            opened.close()


def test_python_blocks_share_the_page_namespace_and_report_the_page_line(tmp_path):
    page = "```python\nx = 2\n```\n\n```python\ny = x * 3\nz = y / 0\n```\n\n```python\nz = 1\n```\n"
    with pytest.raises(BlockFailed) as failed:
        run_page(tmp_path, page)
    assert str(failed.value).endswith("page.md:5: line 7: ZeroDivisionError: division by zero")
    # A Python block after a failed one is not run; the failure it names is the earlier block's.
    (tmp_path / "page.md").write_text(page)
    from doc_blocks import page_blocks

    opened = Pages()
    try:
        with pytest.raises(BlockFailed, match=r"page.md:10: not run: .*page.md:5\)"):
            opened.run(page_blocks(tmp_path / "page.md")[2])
    finally:
        opened.close()


def test_trainings_of_a_page_are_bounded(tmp_path):
    page = ("```python\nimport torch\nimport traincraft as tc\n"
            "trainer = tc.Trainer(torch.nn.Linear(2, 1), loss='mse', max_epochs=500, progress=False)\n"
            "trainer.fit((torch.randn(16, 2), torch.randn(16, 1)))\n"
            "assert trainer.state.epoch == 2, trainer.state.epoch\n```\n")
    run_page(tmp_path, page)


@pytest.mark.parametrize("text, message", [
    ("data: {dataset: iris}\nmodel: mlp\ntrain: {max_epoch: 3}\n", "train.max_epoch"),
    ("schedule: {name: step}\n", "step_size"),
    ("optimizer: {name: adamw, betaz: [0.9, 0.99]}\n", "betaz"),
    ("loss: {name: focal, gamma: '2'}\n", "gamma"),
    ("metrics: [accuracy, accuracy]\n", "accuracy"),
])
def test_a_recipe_block_that_drifted_fails(tmp_path, text, message):
    with pytest.raises(BlockFailed, match=rf"page.md:1: .*{message}"):
        run_page(tmp_path, f"```yaml\n{text}```\n")


@pytest.mark.parametrize("line, message", [
    ("traincraft fit r.yaml --bogus 3", "unrecognized arguments: --bogus"),
    ("traincraft evaluate", "required"),
    ("traincraft lr-find quickstart --rule fastest", "invalid choice: 'fastest'"),
    ("traincraft tune quickstart --trials many", "invalid int value"),
    ("traincraft fit quickstart train.max_epochz=3", "max_epochz"),
    ("traincraft nosuchcommand", "invalid choice"),
    ("traincraft list lossez", "invalid choice"),
    ("traincraft init nosuchtemplate", "unknown template"),
    ('eval "$(traincraft list lossez)"', "invalid choice"),
    ("make test nosuchtarget", "make test nosuchtarget: the Makefile has no target 'nosuchtarget'"),
])
def test_a_command_line_that_drifted_fails(tmp_path, line, message):
    with pytest.raises(BlockFailed, match=rf"page.md:1: line 2: .*{message}"):
        run_page(tmp_path, f"```bash\n{line}\n```\n")


def test_command_lines_run_or_parse_in_the_page_folder(tmp_path, pages):
    page = run_page(tmp_path, (
        "```bash\n$ traincraft init quickstart -o q.yaml && traincraft list losses > names.txt\n"
        "traincraft fit q.yaml --nproc 2 train.max_epochs=1 \\\n    --run-dir runs/x   # a comment\n"
        "torchrun --nproc-per-node 2 -m traincraft fit q.yaml --resume auto\n"
        "traincraft resume runs/quickstart/<time> train.max_epochs=80\n"
        'eval "$(traincraft list templates)"  # a comment\n'
        "traincraft schema > ~/schema.json\n"
        "tensorboard --logdir runs\n```\n"
        "```yaml\n# named.yaml\ndata: {dataset: iris}\nmodel: mlp\n```\n"
        "```bash\ntraincraft config named.yaml seed=3\n```\n"), pages)
    assert (page.folder / "q.yaml").is_file() and not (page.folder / "runs").exists()
    assert "cross_entropy" in (page.folder / "names.txt").read_text()
    assert (page.folder / "named.yaml").read_text().startswith("# named.yaml")


@pytest.mark.parametrize("shown, message", [
    ("split(text, *, sep=None) -> list", None),
    ("split(text, *, sep=',') -> list", "sep=',' on the page, sep=None in the code"),
    ("split(text, sep=None) -> list", r"the page shows \(text, sep\), the code has \(text, \*, sep\)"),
    ("split(text) -> list", r"the code has \(text, \*, sep\)"),
    ("nowhere(text) -> list", "nowhere is not there"),
    ("split(text, *, sep=None)", None),  # a call, run as code
])
def test_a_signature_block_is_the_function_s(tmp_path, shown, message):
    page = ("```python\ndef split(text, *, sep=None):\n    return text.split(sep)\n```\n\n"
            f"```python\n{shown}\n```\n")
    if message is None:
        run_page(tmp_path, page)
    else:
        with pytest.raises(BlockFailed, match=message):
            run_page(tmp_path, page)


def test_what_a_page_adds_to_this_process_is_undone(tmp_path):
    from traincraft import metrics

    before = metrics.names()
    page = ("```python\nfrom pathlib import Path\nfrom traincraft import metrics\n"
            "metrics.REGISTRY.add('share_of_docs', metrics.build('accuracy').__class__)\n"
            "Path('pagemodule.py').write_text('X = 1')\nimport pagemodule\n```\n")
    opened = Pages()
    page_state = run_page(tmp_path, page, opened)
    assert "share_of_docs" in metrics.names() and "pagemodule" in sys.modules
    opened.close()
    assert metrics.names() == before and "pagemodule" not in sys.modules
    assert not page_state.folder.exists()
