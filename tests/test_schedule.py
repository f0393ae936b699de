"""The task schedule is a pure function of the config: stages, epochs and task kinds."""

import pytest

from impress_lightning.schedule import TaskSchedule


def test_heterogeneous_stages_and_epoch_lookup():
    s = TaskSchedule(num_tasks=5, num_impressions=2, source="heterogeneous", impression_epochs=3,
                     combination_epochs=2)
    assert [(st.task, st.kind, st.slot, st.first_epoch, st.epochs) for st in s.stages] == [
        (0, "impression", 0, 0, 3), (1, "impression", 1, 3, 3), (2, "combination", None, 6, 2),
        (3, "combination", None, 8, 2), (4, "combination", None, 10, 2)]
    assert s.total_epochs == 12
    assert [s.task_of_epoch(e) for e in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert s.bank_size == 2
    assert [s.kind_of_task(t) for t in range(5)] == ["impression"] * 2 + ["combination"] * 3


def test_homogeneous_learns_all_impressions_on_task_zero():
    s = TaskSchedule(num_tasks=3, num_impressions=3, source="homogeneous")
    assert [(st.task, st.slot, st.completes_task) for st in s.stages[:3]] == [(0, 0, False), (0, 1, False),
                                                                            (0, 2, True)]
    assert [st.task for st in s.stages[3:]] == [1, 2]
    assert s.impression_slot_of_task(0) == 0 and s.impression_slot_of_task(1) is None


def test_random_and_supsup_sources():
    random = TaskSchedule(num_tasks=4, num_impressions=2, source="random")
    assert all(st.kind == "combination" for st in random.stages) and random.bank_size == 2
    supsup = TaskSchedule(num_tasks=4, num_impressions=0, source="supsup")
    assert [st.slot for st in supsup.stages] == [0, 1, 2, 3] and supsup.bank_size == 4
    assert all(supsup.kind_of_task(t) == "impression" for t in range(4))


@pytest.mark.parametrize("kwargs, field", [
    ({"num_tasks": 0, "num_impressions": 1}, "num_tasks"),
    ({"num_tasks": 3, "num_impressions": 4}, "num_impressions"),
    ({"num_tasks": 3, "num_impressions": 1, "source": "mixed"}, "impression_source"),
    ({"num_tasks": 3, "num_impressions": 1, "impression_epochs": 0}, "impression_epochs"),
])
def test_bad_schedules_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TaskSchedule(**kwargs)
