import pandas as pd

from gmlib.book.tables import for_people, name_for_people


def test_study_columns_read_as_words():
    assert name_for_people("dice_positive_after_ci") == "positive-pair Dice, fine-tuned (95 % CI ±)"
    assert name_for_people("dice_kaggle_before") == "Kaggle Dice, pruned"
    assert name_for_people("val_dice_kaggle") == "validation Kaggle Dice"
    assert name_for_people("macs_reduction") == "MACs removed (%)"
    assert name_for_people("dice_kaggle_elsewhere") == "dice_kaggle_elsewhere"  # unknown: left as it is
    assert name_for_people("ms") == "ms"


def test_a_frame_keeps_its_values_and_gets_words_for_columns_and_index():
    frame = pd.DataFrame({"criterion": ["fpgm"], "rate": [0.3], "dice_positive_recal": [0.71]}).set_index(
        ["criterion", "rate"])
    shown = for_people(frame)
    assert list(shown.columns) == ["positive-pair Dice, recalibrated"] and list(shown.index.names) == ["criterion",
                                                                                                       "rate"]
    assert shown.to_numpy().tolist() == frame.to_numpy().tolist()
