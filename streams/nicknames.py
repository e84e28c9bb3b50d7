"""Nicknames and short forms of English given names seen in London records, to one canonical form."""
from __future__ import annotations

_GROUPS = [
    ("WILLIAM", "BILL", "BILLY", "WILL", "WILLIE", "LIAM"), ("ROBERT", "BOB", "BOBBY", "ROB", "ROBBIE", "BERT"),
    ("RICHARD", "DICK", "RICH", "RICKY", "RICK"), ("ANTHONY", "TONY", "ANT"), ("CHRISTOPHER", "CHRIS", "KIT"),
    ("EDWARD", "TED", "TEDDY", "ED", "EDDIE", "NED"), ("MICHAEL", "MIKE", "MICK", "MICKEY"),
    ("THOMAS", "TOM", "TOMMY"), ("DANIEL", "DAN", "DANNY"), ("JOSEPH", "JOE", "JOEY"), ("SAMUEL", "SAM", "SAMMY"),
    ("JAMES", "JIM", "JIMMY", "JAMIE"), ("MARGARET", "PEGGY", "MAGGIE", "MEG", "MAG"),
    ("ELIZABETH", "LIZ", "LIZZIE", "BETH", "BETTY", "LIBBY", "ELIZA"), ("CATHERINE", "KATE", "KATIE", "CATH", "KATHERINE", "KATHRYN"),
    ("JENNIFER", "JENNY", "JEN"), ("SUSAN", "SUE", "SUSIE"), ("REBECCA", "BECKY", "BECCA"),
    ("VICTORIA", "VICKY", "VIC", "TORI"), ("PATRICIA", "PAT", "PATSY", "TRISH"), ("DEBORAH", "DEBBIE", "DEB"),
    ("ALEXANDER", "ALEX", "SANDY"), ("BENJAMIN", "BEN", "BENNY"), ("MOHAMMED", "MOHAMED", "MUHAMMAD", "MOHAMMAD"),
    ("OLIVER", "OLLIE"), ("MATTHEW", "MATT"), ("ANDREW", "ANDY", "DREW"), ("STEPHEN", "STEVE", "STEVEN"),
]
_CANONICAL = {name: group[0] for group in _GROUPS for name in group}


def canonical_given(name: str) -> str:
    name = name.upper().strip()
    return _CANONICAL.get(name, name)
