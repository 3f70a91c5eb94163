"""mlflow_checks: every input rule of a role in one task, every problem in one message.

The roles' preflights used one `assert` task per rule: a run paid a task
(and a line of output) per rule, and stopped at the first bad value. This
action evaluates a list of rules on the controller, touches nothing, and fails
once, naming every variable that is wrong:

    - name: Check the role's input
      mlflow_checks:
        checks:
          - that: mlflow_gc_older_than_days | int >= 1
            msg: "mlflow_gc_older_than_days: {{ mlflow_gc_older_than_days }} must be at least 1."
          - that: item.value is match('^/')
            loop: "{{ {'mlflow_gc_data_dir': mlflow_gc_data_dir} | dict2items }}"
            msg: "{{ item.key }}: '{{ item.value }}' must be an absolute path."
          - that: mlflow_gc_tracking_uri is match('^https?://')
            when: mlflow_gc_enabled | bool
            msg: ...

Each rule: `that` (a conditional, or a list of them, as for `assert`), `msg`
(templated only when the rule fails, so it may show what the conditional
guarded against), and optionally `when` (the rule applies only then) and
`loop` (a list, or a dict, each element bound to `item` for `that` and
`msg`). Every rule is evaluated, in order, whatever the earlier ones found:
a rule that needs an earlier one to hold (a number before a comparison) says
so in its own `when`. A `that` that cannot be evaluated counts as failed, so a
value of the wrong type gets the rule's message, not a Jinja error.

The rules are data in the role's task file, not templated as task
arguments: this plugin evaluates each one itself, in order.
"""
from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

_KEYS = {"that", "msg", "when", "loop"}


class ActionModule(ActionBase):
    _requires_connection = False
    _supports_check_mode = True

    @classmethod
    def finalize_task_arg(cls, name, value, templar, context):
        if name == "checks":
            return value  # evaluated rule by rule in run()
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        checks = self._task.args.get("checks")
        extra = set(self._task.args) - {"checks"}
        if extra or not isinstance(checks, list) or not checks:
            raise AnsibleActionFail("mlflow_checks takes one option, `checks`: a non-empty list of rules.")

        problems = []
        for number, check in enumerate(checks, start=1):
            if not isinstance(check, Mapping) or not {"that", "msg"} <= set(check) or set(check) - _KEYS:
                raise AnsibleActionFail(
                    f"mlflow_checks: rule {number} must have `that` and `msg`, and only `when` and `loop` besides."
                )
            if "when" in check and not self._templar.evaluate_conditional(check["when"]):
                continue
            conditions = check["that"] if isinstance(check["that"], list) else [check["that"]]
            if "loop" in check:
                items = self._templar.template(check["loop"])
                if isinstance(items, Mapping):
                    items = [{"key": key, "value": value} for key, value in items.items()]
                if not isinstance(items, list):
                    raise AnsibleActionFail(f"mlflow_checks: the loop of rule {number} is not a list or a dict.")
                templars = [
                    self._templar.copy_with_new_env(available_variables=ChainMap({"item": item}, task_vars))
                    for item in items
                ]
            else:
                templars = [self._templar]
            for templar in templars:
                if not self._holds(templar, conditions):
                    problems.append(self._message(templar, check["msg"]))

        result["changed"] = False
        result["checked"] = len(checks)
        if problems:
            result["failed"] = True
            result["problems"] = problems
            result["msg"] = problems[0] if len(problems) == 1 else (
                f"{len(problems)} problems: " + " | ".join(problems))
        else:
            result["msg"] = f"{len(checks)} rules passed"
        return result

    @staticmethod
    def _holds(templar, conditions):
        """True when every condition holds. A condition that cannot be evaluated
        (a value of the wrong type for it, say) counts as not holding: the
        rule's own message names the variable better than a Jinja error."""
        for condition in conditions:
            try:
                if not templar.evaluate_conditional(condition):
                    return False
            except Exception:  # noqa: BLE001 - any evaluation error means the input is bad
                return False
        return True

    @staticmethod
    def _message(templar, msg):
        try:
            text = str(templar.template(msg))
        except Exception as error:  # noqa: BLE001 - still report the rule, with its raw text
            text = f"{msg} (the message could not be filled in: {error})"
        return " ".join(text.split())
