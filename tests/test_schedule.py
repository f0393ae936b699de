"""The task schedule is a pure function of the config and the recorded placement: stages, epochs, kinds."""

import pytest

from impress_lightning.schedule import COMBINATION, PENDING, TaskSchedule
from impress_lightning.tasks import plan_slots


def schedule(source, num_tasks, num_impressions, **kwargs):
    return TaskSchedule(tuple(plan_slots(source, num_tasks, num_impressions)), **kwargs)


def test_heterogeneous_stages_and_epoch_lookup():
    s = schedule("heterogeneous", 5, 2, impression_epochs=3, combination_epochs=2)
    assert [(st.task, st.kind, st.slot, st.first_epoch, st.epochs) for st in s.stages] == [
        (0, "impression", 0, 0, 3), (1, "impression", 1, 3, 3), (2, "combination", None, 6, 2),
        (3, "combination", None, 8, 2), (4, "combination", None, 10, 2)]
    assert s.total_epochs == 12
    assert [s.task_of_epoch(e) for e in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [s.kind_of_task(t) for t in range(5)] == ["impression"] * 2 + ["combination"] * 3


def test_homogeneous_learns_all_impressions_on_task_zero():
    s = TaskSchedule(tuple(plan_slots("homogeneous", 3, 3)), homogeneous=3)
    assert [(st.task, st.slot, st.completes_task) for st in s.stages[:3]] == [(0, 0, False), (0, 1, False),
                                                                            (0, 2, True)]
    assert [st.task for st in s.stages[3:]] == [1, 2]
    assert s.impression_slot_of_task(0) == 0 and s.impression_slot_of_task(1) is None


def test_random_and_supsup_sources():
    random = schedule("random", 4, 2)
    assert all(st.kind == "combination" for st in random.stages)
    supsup = schedule("supsup", 4, 0)
    assert [st.slot for st in supsup.stages] == [0, 1, 2, 3]
    assert all(supsup.kind_of_task(t) == "impression" for t in range(4))


def test_explicit_impression_tasks_take_slots_in_task_order():
    slots = plan_slots("heterogeneous", 6, 3, impression_tasks=[4, 0, 2])
    assert slots == [0, COMBINATION, 1, COMBINATION, 2, COMBINATION]


def test_pending_tasks_budget_the_longer_kind_and_shift_once_decided():
    slots = plan_slots("heterogeneous", 3, 1, impression_tasks=[0], adaptive=True)
    assert slots == [0, PENDING, PENDING]
    s = TaskSchedule(tuple(slots), impression_epochs=3, combination_epochs=1)
    assert [(st.kind, st.first_epoch, st.epochs) for st in s.stages] == [
        ("impression", 0, 3), ("pending", 3, 3), ("pending", 6, 3)]
    assert s.total_epochs == 9  # an upper bound while tasks are pending
    decided = TaskSchedule((0, COMBINATION, PENDING), impression_epochs=3, combination_epochs=1)
    assert [(st.kind, st.first_epoch) for st in decided.stages] == [("impression", 0), ("combination", 3),
                                                                     ("pending", 4)]
    assert decided.task_of_epoch(4) == 2 and decided.stage_of_epoch(100).task == 2


@pytest.mark.parametrize("call, field", [
    (lambda: TaskSchedule(()), "num_tasks"),
    (lambda: TaskSchedule((0, COMBINATION), impression_epochs=0), "impression_epochs"),
    (lambda: plan_slots("heterogeneous", 3, 1, impression_tasks=[1, 2]), "task 0"),
    (lambda: plan_slots("heterogeneous", 3, 1, impression_tasks=[0, 5]), "impression_tasks"),
])
def test_bad_schedules_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()
