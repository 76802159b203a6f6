"""What both inputs share: a dataset's facts for each task, and the shard plan's checks."""

import pytest

from tests._configs import tiny_config
from train.data.common import DataError, make_spec, task_facts

DIGITS = {"image": ((8, 8, 1), None), "label": ((), 10), "index": ((), None)}


def test_task_facts_of_each_task():
    assert task_facts(DIGITS, tiny_config()) == (10, 1, (8, 8))
    seg = tiny_config("shapes64_seg.py", **{"segmentation.num_classes": 0})
    scenes = {"image": ((64, 64, 3), None), "label": ((), 5), "segmentation": ((64, 64, 1), None)}
    assert task_facts(scenes, seg) == (6, 3, (64, 64))  # the label's classes + background
    assert task_facts({"tokens": ((65,), None)}, tiny_config("lm_stdlib.py")) == (256, 0, (65,))


@pytest.mark.parametrize("name,features,message", [
    ("digits.py", {"image": ((8, 8, 1), None)}, r"has no \['label'\] feature"),
    ("digits.py", {**DIGITS, "label": ((), None)}, "'label' of 'digits' is not a class label"),
    ("shapes64_seg.py", {"image": ((64, 64, 3), None), "segmentation": ((64, 64, 1), None)},
     "config.segmentation.num_classes: 'shapes64' has no 'label'"),
    ("lm_stdlib.py", {"tokens": ((1,), None)}, "config.language.tokens_key: 'tokens' must be"),
])
def test_features_a_task_cannot_read_are_named(name, features, message):
    config = tiny_config(name, **({"segmentation.num_classes": 0} if "seg" in name else {}))
    with pytest.raises(DataError, match=message):
        task_facts(features, config)


def test_the_shard_plan_checks_batches_and_processes():
    def plan(split, count):
        return (100,) * count, [split] * count

    spec = make_spec(tiny_config(data_shards=4, batch_size=32), DIGITS, plan,
                     process_index=1, process_count=2)
    assert spec.shards == (2, 3) and spec.shard_batch == 8 and spec.local_batch == 16
    assert spec.steps_per_epoch == 12 and spec.eval_steps == 13
    with pytest.raises(DataError, match="config.data_shards 3 is not divisible by the 2"):
        make_spec(tiny_config(data_shards=3), DIGITS, plan, process_index=0, process_count=2)
    with pytest.raises(DataError, match="config.batch_size 32 is not divisible by the 3 data"):
        make_spec(tiny_config(data_shards=3), DIGITS, plan, process_index=0, process_count=1)
    with pytest.raises(DataError, match="config.batch_size 512 exceeds the training split"):
        make_spec(tiny_config(batch_size=512), DIGITS, plan, process_index=0, process_count=1)
