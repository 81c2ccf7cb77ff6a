"""The reactor block in a small Pyomo flowsheet: a feed mixer upstream, connected by an Arc.

Three pure feeds — monomer, solvent and initiator, each at its own temperature — are mixed before the
reactor; the reactor model takes a single feed temperature, so the mixer supplies it (constant heat
capacity, as the reactor model assumes: the mixed temperature is the mass-weighted mean). The monomer
arrives from storage at 330 K, below the reactor temperature; the solvent can be preheated.

Design question answered at steady state: the reactor must make the high grade (P = 100 kg/m³ at T =
350 K) with the coolant at the 340 K the utility delivers: which solvent preheat temperature and which
initiator feed does that take? The flowsheet is square — two
specifications (P, T_c) for two unknowns (initiator feed, solvent temperature) — and ``solve_nlp`` solves
it with CasADi's IPOPT.

Run: ``python examples/pyomo_flowsheet.py``
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyomo.environ as pyo
from pyomo.network import Arc, Port

from safectrl.models import polycstr as pc
from safectrl.models.pyomo import NLPResult, polycstr_block, solve_nlp, to_si

#: Feed flows (kg/h) and temperatures (K) of the monomer and the initiator; the solvent flow is the model's.
MONOMER = (100.0, 330.0)
SOLVENT_FLOW = 80.0
INITIATOR_TEMPERATURE = 300.0
T_C_SPEC = 340.0  # K, the coolant temperature the utility delivers


@dataclass(frozen=True)
class FlowsheetSolution:
    """The designed operating point."""

    solvent_temperature: float  # K, required preheat
    initiator_feed: float  # kg/h
    mixed_temperature: float  # K, reactor feed
    reactor_state: np.ndarray  # (A, I, R, P, T), SI
    result: NLPResult


def mixer(blk: pyo.Block) -> None:
    """A three-feed mixer at constant heat capacity; its outlet port matches the reactor's inlet."""
    blk.flow_monomer = pyo.Var(bounds=(0.0, None))  # kg/h
    blk.flow_solvent = pyo.Var(bounds=(0.0, None))
    blk.flow_initiator = pyo.Var(bounds=(0.0, None), initialize=1.0)
    blk.T_monomer = pyo.Var(bounds=(250.0, 450.0))  # K
    blk.T_solvent = pyo.Var(bounds=(250.0, 450.0), initialize=350.0)
    blk.T_initiator = pyo.Var(bounds=(250.0, 450.0))
    blk.T_out = pyo.Var(bounds=(250.0, 450.0), initialize=330.0)
    flows = (blk.flow_monomer, blk.flow_solvent, blk.flow_initiator)
    temperatures = (blk.T_monomer, blk.T_solvent, blk.T_initiator)
    blk.energy = pyo.Constraint(
        expr=blk.T_out * sum(flows) == sum(w * T for w, T in zip(flows, temperatures))
    )
    # Member names as the reactor's inlet (safectrl.models.pyomo.INLET), so that an Arc connects them.
    blk.outlet = Port(initialize={
        "flow_monomer": blk.flow_monomer,
        "flow_solvent": blk.flow_solvent,
        "flow_initiator": blk.flow_initiator,
        "temperature": blk.T_out,
    })


def build(params: pc.PolyCSTRParams = pc.PolyCSTRParams()) -> pyo.ConcreteModel:
    """The flowsheet: mixer -> reactor, with the design specifications fixed."""
    m = pyo.ConcreteModel(name="polycstr_flowsheet")
    m.mixer = pyo.Block(rule=mixer)
    m.reactor = polycstr_block(params=params)
    m.feed = Arc(source=m.mixer.outlet, destination=m.reactor.inlet)
    pyo.TransformationFactory("network.expand_arcs").apply_to(m)
    # The mixer now supplies the reactor's inlet: drop the reactor's own inlet specification.
    m.reactor.inlet_spec.deactivate()

    m.mixer.flow_monomer.fix(MONOMER[0])
    m.mixer.T_monomer.fix(MONOMER[1])
    m.mixer.flow_solvent.fix(SOLVENT_FLOW)
    m.mixer.T_initiator.fix(INITIATOR_TEMPERATURE)
    m.reactor.P.fix(pc.HIGH_GRADE[0])
    m.reactor.T.fix(pc.HIGH_GRADE[1])
    m.reactor.T_c.fix(T_C_SPEC)
    return m


def design(params: pc.PolyCSTRParams = pc.PolyCSTRParams(), solver: str = "auto") -> FlowsheetSolution:
    """Solve the square flowsheet; raises ``NLPSolveError`` if IPOPT does not succeed."""
    m = build(params)
    result = solve_nlp(m, solver=solver, options={"tol": 1e-10})
    state = to_si([pyo.value(m.reactor.component(s)) for s in pc.STATES])
    return FlowsheetSolution(
        solvent_temperature=float(pyo.value(m.mixer.T_solvent)),
        initiator_feed=float(pyo.value(m.mixer.flow_initiator)),
        mixed_temperature=float(pyo.value(m.mixer.T_out)),
        reactor_state=state,
        result=result,
    )


def main() -> None:
    sol = design()
    print(f"solver {sol.result.solver}: {sol.result.status}, {sol.result.n_variables} variables")
    P, T = pc.HIGH_GRADE
    print(f"to make P = {P:.0f} kg/m³ at T = {T:.0f} K with T_c = {T_C_SPEC:.0f} K:")
    print(f"  preheat the solvent to   {sol.solvent_temperature:7.2f} K")
    print(f"  initiator feed           {sol.initiator_feed:7.3f} kg/h")
    print(f"  mixed reactor feed       {sol.mixed_temperature:7.2f} K")
    nominal = pc.steady_state(*pc.HIGH_GRADE)
    print(f"(with the paper's single feed at {pc.PolyCSTRParams().T_feed:.0f} K the same grade needs "
          f"T_c = {nominal.u[1]:.2f} K and f_I = {nominal.u[0]:.3f} kg/h)")


if __name__ == "__main__":
    main()
