"""`refine-bench run`: the main job. Until the trainer lands, only the `base` arm runs (load and generate)."""

from __future__ import annotations

import torch
import typer

from refine_bench.errors import UserInputError
from refine_bench.models.zoo import load_model, load_tokenizer

ARMS = ("base", "sft", "refine")
DEFAULT_PROMPT = "The grass is green. The sky is blue. The sun is yellow. The magic number is 7. The magic number is"


def run_command(
    model: str = typer.Option("deltanet-tiny", help="Zoo name, local checkpoint directory or hub id."),
    arm: str = typer.Option("base", help=f"One of {', '.join(ARMS)}."),
    prompt: str = typer.Option(DEFAULT_PROMPT, help="Prompt for the generation check."),
    max_new_tokens: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Load the model and generate greedily (the training arms arrive with the trainer)."""
    if arm not in ARMS:
        raise UserInputError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
    if arm != "base":
        raise UserInputError(f"arm {arm!r} needs the trainer, which is not in this version yet; use --arm base")
    torch.manual_seed(seed)
    lm = load_model(model, device=device, seed=seed)
    tok = load_tokenizer(model)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:]
    n_params = sum(p.numel() for p in lm.parameters())
    typer.echo(f"model {model} ({lm.config.model_type}, {n_params:,} parameters), arm {arm}, device {device}")
    typer.echo(f"prompt:     {prompt!r}")
    typer.echo(f"generated:  {tok.decode(new)!r}")
