"""`refine-bench data prepare`: keep the documents long enough for the paper's mid-training and write them as
local parquet shards, so training reads them offline and resumes without re-downloading."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("prepare")
def prepare_command(
    source: str = typer.Option(..., help="hf:NAME[:CONFIG][@SPLIT], a local file/folder, or a save_to_disk folder."),
    model: str = typer.Option("deltanet-1.3b", help="Model whose tokenizer measures document length."),
    min_tokens: int = typer.Option(16384, help="Keep documents with at least this many tokens."),
    num_documents: int = typer.Option(12800, help="Stop after this many kept documents (paper: 100 x 128)."),
    text_field: str = typer.Option("text", help="Column holding the document text."),
    out: Path = typer.Option(..., help="Output folder of parquet shards (column 'text')."),
) -> None:
    """Filter `source` to documents of >= min_tokens tokens and write them to `out`."""
    from refine_bench.errors import UserInputError
    from refine_bench.models.zoo import load_tokenizer
    from refine_bench.train.documents import read_documents, write_documents_parquet

    if min_tokens < 1 or num_documents < 1:
        raise UserInputError("--min-tokens and --num-documents must be >= 1")
    tokenizer = load_tokenizer(model)
    seen = {"read": 0, "kept": 0}

    def long_documents():
        for doc in read_documents(source, text_field):
            seen["read"] += 1
            if len(tokenizer(doc, add_special_tokens=False)["input_ids"]) >= min_tokens:
                seen["kept"] += 1
                yield doc
                if seen["kept"] >= num_documents:
                    return

    written = write_documents_parquet(long_documents(), out)
    typer.echo(f"kept {written} of {seen['read']} documents with >= {min_tokens} tokens -> {out}")
    if written == 0:
        raise UserInputError(f"no document of {source} has {min_tokens} tokens or more")
