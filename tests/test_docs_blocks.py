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
