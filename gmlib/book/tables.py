"""Column names for people: the study's frames keep snake_case names (what the store and the CSVs hold), and a
chapter shows them as words, e.g. dice_positive_after_ci -> "positive-pair Dice, fine-tuned (95 % CI ±)"."""
import pandas as pd

__all__ = ["METRICS", "STAGES", "name_for_people", "for_people"]

METRICS = {"dice_kaggle": "Kaggle Dice", "dice_positive": "positive-pair Dice"}
STAGES = {"before": "pruned", "recal": "recalibrated", "after": "fine-tuned"}
WORDS = {"macs_reduction": "MACs removed (%)", "params_reduction": "params removed (%)", "params": "params",
         "step_rate": "this step's rate", "within_tolerance": "within the end condition", "train_loss": "training loss",
         "val_loss": "validation loss", "lr": "learning rate", "best": "best so far", "rate": "rate",
         "steps": "fine-tuning steps", "seeds": "seeds", "criterion": "criterion", "policy": "policy",
         "pairs": "seed pairs", "other": "against", "ci": "95 % CI ±",
         # a pruning report (PruneReport.to_frame; its "name" is a layer's, which only the caller can say)
         "in_before": "inputs before", "in_after": "inputs after", "out_before": "outputs before",
         "out_after": "outputs after", "note": "note",
         # the data's class statistics (chapter 04) and the post-processing (chapter 05)
         "class_id": "class", "images": "images", "image_share": "share of images",
         "mean_area_pct": "mean mask area (%)", "real_image_share": "real share of images",
         "real_mean_area_pct": "real mean mask area (%)", "min_area": "minimum area (px)", "threshold": "threshold",
         "min_area_full_res": "minimum area at full resolution (px)"}


def name_for_people(column: str) -> str:
    """The words for one column name; a name it does not know is returned as it is."""
    if column in WORDS:
        return WORDS[column]
    name, ci = (column[:-3], " (95 % CI ±)") if column.endswith("_ci") else (column, "")
    split, name = ("validation ", name[4:]) if name.startswith("val_") else ("", name)
    for key, metric in METRICS.items():
        if name == key or name.startswith(key + "_") and name[len(key) + 1:] in STAGES:
            stage = STAGES.get(name[len(key) + 1:])
            return f"{split}{metric}" + (f", {stage}" if stage else "") + ci
    return column


def for_people(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its columns and index levels named in words (name_for_people); the values are untouched."""
    out = frame.rename(columns=lambda c: name_for_people(c) if isinstance(c, str) else c)
    return out.rename_axis(index=[name_for_people(n) if isinstance(n, str) else n for n in out.index.names])
