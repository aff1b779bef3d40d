"""in-place-result-assigned: `model = model.load_state_dict(sd)` -> `model.load_state_dict(sd)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class InPlaceResultAssignedFix(Codemod):
    """Calls the in-place method for its effect and keeps the object under the name:
    `model = model.load_state_dict(sd)` -> `model.load_state_dict(sd)`;
    `net = Net().load_state_dict(sd)` -> `net = Net()` then `net.load_state_dict(sd)`;
    `loaded = model.load_state_dict(sd)` read as a model -> the call, then `loaded = model`;
    `order = random.shuffle(order)` -> `random.shuffle(order)`. A built object passed as the
    function's argument (`set_peft_model_state_dict(Net(), w)`) is left to a human."""

    rule = "in-place-result-assigned"
    kind = FixKind.CORRECTNESS
    summary = "call the in-place method for its effect and keep the object"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        where = target.data.get("object")
        for line in ctx.find(cst.SimpleStatementLine, within=(target.line, target.end_line)):
            assign = line.body[0] if len(line.body) == 1 else None
            if not (
                isinstance(assign, cst.Assign)
                and len(assign.targets) == 1
                and isinstance(assign.value, cst.Call)
            ):
                continue
            call = assign.value
            name = ctx.code(assign.targets[0].target)
            if where == "receiver" and isinstance(call.func, cst.Attribute):
                worked_on: cst.BaseExpression = call.func.value
            elif where == "argument" and call.args:
                worked_on = call.args[0].value
            else:
                return False
            obj = ctx.code(worked_on)
            if isinstance(worked_on, cst.Call):
                if where != "receiver":
                    return ctx.decline("the object is built inside the call: a human's call")
                # `net = Net().load_state_dict(sd)`: build, bind, then load into the name
                ctx.substitute(assign, assign.with_changes(value=worked_on))
                method = call.with_changes(func=call.func.with_changes(value=cst.Name(name)))
                ctx.insert_after(line, [cst.SimpleStatementLine(body=[cst.Expr(value=method)])])
                return True
            ctx.substitute(assign, cst.Expr(value=call))
            if obj != name:
                ctx.insert_after(line, f"{name} = {obj}\n")
            return True
        return False
