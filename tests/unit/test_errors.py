"""jsonargparse's nested messages become one sentence that names the key."""

from __future__ import annotations

from genlora_pl.errors import one_line


def test_a_value_inside_a_class_path_section_names_its_full_key():
    message = (
        'Parser key "model.optimizer":\n  Type typing.Callable expects a function or a callable class: '
        'Parser key "lr":\n\n    - Expected a path but abc either not accessible or invalid\n'
        "    - Does not validate against any of the Union subtypes\n    Subtypes: [<class 'float'>]\n"
        "    Errors:\n      - Expected a <class 'float'>\n    Given value type: <class 'str'>\n"
        "    Given value: abc. Got value: Namespace(class_path='torch.optim.AdamW', init_args=Namespace(lr='abc'))"
    )
    assert one_line(ValueError(message)) == "model.optimizer.init_args.lr='abc' is not valid; expected one of float."


def test_a_plain_key():
    message = (
        'Parser key "trainer.max_epochs":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Errors:\n    - Expected a <class 'int'>\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n  Given value: many"
    )
    assert one_line(ValueError(message)) == "trainer.max_epochs='many' is not valid; expected one of int, null."
