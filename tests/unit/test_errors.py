"""jsonargparse's nested messages become one sentence that names the key."""

from __future__ import annotations

from genlora_pl.errors import one_line
from genlora_pl.tasks import TASKS, class_path


def test_a_value_inside_a_class_path_section_names_its_full_key():
    message = (
        'Parser key "model.optimizer":\n  Type typing.Callable expects a function or a callable class: '
        'Parser key "lr":\n\n    - Expected a path but abc either not accessible or invalid\n'
        "    - Does not validate against any of the Union subtypes\n    Subtypes: [<class 'float'>]\n"
        "    Errors:\n      - Expected a <class 'float'>\n    Given value type: <class 'str'>\n"
        "    Given value: abc. Got value: Namespace(class_path='torch.optim.AdamW', init_args=Namespace(lr='abc'))"
    )
    assert one_line(ValueError(message)) == "model.optimizer.init_args.lr='abc' is not valid; expected float."


def test_a_plain_key():
    message = (
        'Parser key "trainer.max_epochs":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Errors:\n    - Expected a <class 'int'>\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n  Given value: many"
    )
    assert one_line(ValueError(message)) == "trainer.max_epochs='many' is not valid; expected one of int, null."


# model.class_path chooses the task, so jsonargparse reports a task setting inside a union of task
# classes (messages as jsonargparse 4 writes them for `--model.<key> <value>`)
TASK = (
    'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
    "  Subtypes: [<class 'genlora_pl.tasks.base.AdapterTask'>, <class 'NoneType'>]\n  Errors:\n"
    "    - Problem with given class_path 'genlora_pl.ClassificationModule':\n{inner}\n"
    "    - Expected a <class 'NoneType'>\n  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
    "  Given value: NestedArg(key='{key}', val='{val}')"
)


def test_a_task_setting_with_a_bad_value_names_its_full_key():
    inner = (
        '        Parser key "adapter_lr":\n          Does not validate against any of the Union subtypes\n'
        "          Subtypes: [<class 'float'>, <class 'NoneType'>]\n          Errors:\n"
        "            - Expected a <class 'float'>\n            - Expected a <class 'NoneType'>\n"
        "          Given value type: <class 'str'>\n          Given value: abc"
    )
    message = TASK.format(inner=inner, key="adapter_lr", val="abc")
    assert one_line(ValueError(message)) == "model.adapter_lr='abc' is not valid; expected one of float, null."


def test_a_setting_no_task_takes_is_an_unrecognized_argument():
    inner = "        Option 'no_such_key' is not accepted"
    message = TASK.format(inner=inner, key="no_such_key", val="3")
    assert one_line(ValueError(message)) == (
        "unrecognized arguments: --model.no_such_key 3 (genlora_pl.ClassificationModule takes no setting 'no_such_key')"
    )


def test_a_task_class_that_cannot_be_imported():
    message = TASK.format(inner="        No module named 'nope'", key="class_path", val="nope.Foo")
    message = message.replace("'genlora_pl.ClassificationModule'", "'nope.Foo'")
    line = one_line(ValueError(message))
    assert line.startswith(
        "model.class_path='nope.Foo' cannot be imported (No module named 'nope'); give a subclass of "
        "genlora_pl.tasks.base.AdapterTask"
    )
    # errors.py sits below tasks in the layers, so it names the tasks itself: every registered one.
    for cls in TASKS.values():
        assert class_path(cls) in line


def test_a_data_class_that_cannot_be_imported_names_no_task():
    message = TASK.format(inner="        No module named 'nope'", key="class_path", val="nope.Foo")
    message = message.replace("'genlora_pl.ClassificationModule'", "'nope.Foo'")
    message = message.replace('Parser key "model"', 'Parser key "data"')
    message = message.replace("tasks.base.AdapterTask", "data.base.DataModule")
    assert one_line(ValueError(message)) == (
        "data.class_path='nope.Foo' cannot be imported (No module named 'nope'); "
        "give a subclass of genlora_pl.data.base.DataModule."
    )
