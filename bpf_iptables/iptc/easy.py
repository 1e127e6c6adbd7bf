"""python-iptables' ``iptc.easy``: rules as dictionaries.

Same functions, arguments and dictionary forms as python-iptables 1.2.0
(``{'protocol': 'tcp', 'tcp': {'dport': '22'}, 'target': 'ACCEPT'}``).
Two deliberate differences:

* ``batch_begin()``/``batch_end()`` really batch: python-iptables sets its
  batch flag in a local variable, so every call in between still commits;
  here the changes between them are committed once, at ``batch_end()``
  (one atomic data-path update).
* ``encode_iptc_rule`` skips a field it cannot use, as python-iptables
  does, except one bpf-iptables refuses (``NotSupported``): dropping such
  a match would make the rule match more than asked."""
from __future__ import annotations

from typing import Any

from .errors import NotSupported
from .ip6 import Rule6, Table6
from .rule import Rule
from .table import Chain, Table, is_table_available

_BATCH_MODE = False


def flush_all(ipv6: bool = False) -> None:
    for table in get_tables(ipv6):
        flush_table(table, ipv6)


def flush_table(table: str, ipv6: bool = False, raise_exc: bool = True) -> None:
    try:
        _iptc_gettable(table, ipv6).flush()
    except Exception:
        if raise_exc:
            raise


def flush_chain(table: str, chain: str, ipv6: bool = False, raise_exc: bool = True) -> None:
    try:
        _iptc_getchain(table, chain, ipv6).flush()
    except Exception:
        if raise_exc:
            raise


def zero_all(table: str | None = None, ipv6: bool = False) -> None:
    for name in get_tables(ipv6):
        zero_table(name, ipv6)


def zero_table(table: str, ipv6: bool = False) -> None:
    t = _iptc_gettable(table, ipv6)
    for chain in t.chains:
        chain.zero_counters()


def zero_chain(table: str, chain: str, ipv6: bool = False) -> None:
    _iptc_getchain(table, chain, ipv6).zero_counters()


def has_chain(table: str, chain: str, ipv6: bool = False) -> bool:
    return _iptc_gettable(table, ipv6).is_chain(chain)


def has_rule(table: str, chain: str, rule_d: dict, ipv6: bool = False) -> bool:
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    return encode_iptc_rule(rule_d, ipv6) in iptc_chain.rules


def add_chain(table: str, chain: str, ipv6: bool = False, raise_exc: bool = True) -> bool:
    try:
        _iptc_gettable(table, ipv6).create_chain(chain)
        return True
    except Exception:
        if raise_exc:
            raise
    return False


def add_rule(table: str, chain: str, rule_d: dict, position: int = 0, ipv6: bool = False) -> None:
    """position 0 appends, n > 0 inserts as rule n, n < 0 counts from the end."""
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    iptc_rule = encode_iptc_rule(rule_d, ipv6)
    if position == 0:
        iptc_chain.append_rule(iptc_rule)
    elif position > 0:
        iptc_chain.insert_rule(iptc_rule, position - 1)
    else:
        iptc_chain.insert_rule(iptc_rule, max(position + len(iptc_chain.rules), 0))


def insert_rule(table: str, chain: str, rule_d: dict, ipv6: bool = False) -> None:
    add_rule(table, chain, rule_d, position=1, ipv6=ipv6)


def delete_chain(table: str, chain: str, ipv6: bool = False, flush: bool = False,
                 raise_exc: bool = True) -> None:
    try:
        if flush:
            flush_chain(table, chain, ipv6, raise_exc)
        _iptc_gettable(table, ipv6).delete_chain(chain)
    except Exception:
        if raise_exc:
            raise


def delete_rule(table: str, chain: str, rule_d: dict, ipv6: bool = False,
                raise_exc: bool = True) -> None:
    try:
        iptc_chain = _iptc_getchain(table, chain, ipv6)
        iptc_chain.delete_rule(encode_iptc_rule(rule_d, ipv6))
    except Exception:
        if raise_exc:
            raise


def get_tables(ipv6: bool = False) -> list[str]:
    return [t.name for t in _iptc_gettables(ipv6)]


def get_chains(table: str, ipv6: bool = False) -> list[str]:
    return [c.name for c in _iptc_gettable(table, ipv6).chains]


def get_rule(table: str, chain: str, position: int = 0, ipv6: bool = False,
             raise_exc: bool = True) -> Any:
    """position 0: every rule; n > 0: rule n; n < 0: from the end."""
    try:
        if position == 0:
            return dump_chain(table, chain, ipv6)
        iptc_chain = _iptc_getchain(table, chain, ipv6)
        index = position - 1 if position > 0 else position
        return decode_iptc_rule(iptc_chain.rules[index], ipv6)
    except Exception:
        if raise_exc:
            raise
    return None


def replace_rule(table: str, chain: str, old_rule_d: dict, new_rule_d: dict,
                 ipv6: bool = False) -> None:
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    old = encode_iptc_rule(old_rule_d, ipv6)
    new = encode_iptc_rule(new_rule_d, ipv6)
    iptc_chain.replace_rule(new, iptc_chain.rules.index(old))


def get_rule_counters(table: str, chain: str, rule_d: dict, ipv6: bool = False) -> tuple[int, int]:
    """(packets, bytes) of the rule."""
    if not has_rule(table, chain, rule_d, ipv6):
        raise AttributeError(f"Chain <{chain}@{table}> has no rule <{rule_d}>")
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    rules = iptc_chain.rules
    return rules[rules.index(encode_iptc_rule(rule_d, ipv6))].get_counters()


def get_rule_position(table: str, chain: str, rule_d: dict, ipv6: bool = False) -> int:
    if not has_rule(table, chain, rule_d):
        raise AttributeError(f"Chain <{chain}@{table}> has no rule <{rule_d}>")
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    return iptc_chain.rules.index(encode_iptc_rule(rule_d, ipv6))


def test_rule(rule_d: dict, ipv6: bool = False) -> bool:
    try:
        encode_iptc_rule(rule_d, ipv6)
        return True
    except Exception:
        return False


def test_match(name: str, value: Any, ipv6: bool = False) -> bool:
    try:
        _iptc_setmatch(Rule6() if ipv6 else Rule(), name, value)
        return True
    except Exception:
        return False


def test_target(name: str, value: Any, ipv6: bool = False) -> bool:
    try:
        _iptc_settarget(Rule6() if ipv6 else Rule(), {name: value})
        return True
    except Exception:
        return False


def get_policy(table: str, chain: str, ipv6: bool = False) -> str:
    policy = _iptc_getchain(table, chain, ipv6).get_policy()
    return policy.name  # type: ignore[union-attr]


def set_policy(table: str, chain: str, policy: str = "ACCEPT", ipv6: bool = False) -> None:
    _iptc_getchain(table, chain, ipv6).set_policy(policy)


def dump_all(ipv6: bool = False) -> dict:
    return {table: dump_table(table, ipv6) for table in get_tables(ipv6)}


def dump_table(table: str, ipv6: bool = False) -> dict:
    return {chain: dump_chain(table, chain, ipv6) for chain in get_chains(table, ipv6)}


def dump_chain(table: str, chain: str, ipv6: bool = False) -> list[dict]:
    iptc_chain = _iptc_getchain(table, chain, ipv6)
    return [decode_iptc_rule(r, ipv6) for r in iptc_chain.rules]


def batch_begin(table: str | None = None, ipv6: bool = False) -> None:
    """Stop committing: changes collect until batch_end()."""
    global _BATCH_MODE
    for name in ((table,) if table else get_tables(ipv6)):
        _iptc_gettable(name, ipv6).autocommit = False
    _BATCH_MODE = True


def batch_end(table: str | None = None, ipv6: bool = False) -> None:
    """Commit what collected since batch_begin() (one update) and go back
    to autocommit."""
    global _BATCH_MODE
    _BATCH_MODE = False
    for name in ((table,) if table else get_tables(ipv6)):
        _iptc_gettable(name, ipv6).autocommit = True


def batch_add_chains(table: str, chains: list[str], ipv6: bool = False, flush: bool = True) -> None:
    iptc_table = _batch_begin_table(table, ipv6)
    for chain in chains:
        if iptc_table.is_chain(chain):
            iptc_chain = Chain(iptc_table, chain)
        else:
            iptc_chain = iptc_table.create_chain(chain)
        if flush:
            iptc_chain.flush()
    _batch_end_table(table, ipv6)


def batch_delete_chains(table: str, chains: list[str], ipv6: bool = False) -> None:
    iptc_table = _batch_begin_table(table, ipv6)
    for chain in chains:
        if iptc_table.is_chain(chain):
            Chain(iptc_table, chain).flush()
            iptc_table.delete_chain(chain)
    _batch_end_table(table, ipv6)


def batch_add_rules(table: str, batch_rules: list, ipv6: bool = False) -> None:
    """batch_rules: (chain, rule_d, position) triples, one commit."""
    iptc_table = _batch_begin_table(table, ipv6)
    for chain, rule_d, position in batch_rules:
        iptc_chain = Chain(iptc_table, chain)
        iptc_rule = encode_iptc_rule(rule_d, ipv6)
        if position == 0:
            iptc_chain.append_rule(iptc_rule)
        elif position > 0:
            iptc_chain.insert_rule(iptc_rule, position - 1)
        else:
            iptc_chain.insert_rule(iptc_rule, position + len(iptc_chain.rules))
    _batch_end_table(table, ipv6)


def batch_delete_rules(table: str, batch_rules: list, ipv6: bool = False,
                       raise_exc: bool = True) -> None:
    try:
        iptc_table = _batch_begin_table(table, ipv6)
        for chain, rule_d in batch_rules:
            Chain(iptc_table, chain).delete_rule(encode_iptc_rule(rule_d, ipv6))
        _batch_end_table(table, ipv6)
    except Exception:
        if raise_exc:
            raise


_RULE_ATTRS = ("src", "dst", "protocol", "in-interface", "out-interface", "fragment")


def encode_iptc_rule(rule_d: dict, ipv6: bool = False) -> Rule:
    """A Rule from its dictionary form."""
    assert isinstance(rule_d, dict)
    iptc_rule = Rule6() if ipv6 else Rule()
    rule_d.setdefault("target", "")
    # the IP part first: matches may depend on the protocol
    for name in _RULE_ATTRS:
        if name in rule_d:
            setattr(iptc_rule, name.replace("-", "_"), rule_d[name])
    for name, value in rule_d.items():
        try:
            if name in _RULE_ATTRS:
                continue
            if name == "counters":
                iptc_rule.counters = value
            elif name == "target":
                _iptc_settarget(iptc_rule, value)
            else:
                _iptc_setmatch(iptc_rule, name, value)
        except NotSupported:
            raise
        except Exception:
            continue  # python-iptables ignores a field it cannot set
    return iptc_rule


def decode_iptc_rule(iptc_rule: Rule, ipv6: bool = False) -> dict:
    """The dictionary form of a rule (addresses as address/prefix length)."""
    d: dict[str, Any] = {}
    if iptc_rule.src != "0.0.0.0/0.0.0.0":
        ip, mask = iptc_rule.src.split("/")
        d["src"] = f"{ip}/{_netmask_v4_to_cidr(mask)}"
    if iptc_rule.dst != "0.0.0.0/0.0.0.0":
        ip, mask = iptc_rule.dst.split("/")
        d["dst"] = f"{ip}/{_netmask_v4_to_cidr(mask)}"
    if iptc_rule.protocol != "ip":
        d["protocol"] = iptc_rule.protocol
    if iptc_rule.in_interface is not None:
        d["in-interface"] = iptc_rule.in_interface
    if iptc_rule.out_interface is not None:
        d["out-interface"] = iptc_rule.out_interface
    if iptc_rule.fragment:
        d["fragment"] = iptc_rule.fragment
    for m in iptc_rule.matches:
        if m.name not in d:
            d[m.name] = m.get_all_parameters()
        elif isinstance(d[m.name], list):
            d[m.name].append(m.get_all_parameters())
        else:
            d[m.name] = [d[m.name], m.get_all_parameters()]
    target = iptc_rule.target
    if target and target.name and len(target.get_all_parameters()):
        d["target"] = {target.name.replace("-", "_"): target.get_all_parameters()}
    elif target and target.name:
        d["target"] = {"goto": target.name} if target.goto else target.name
    d["counters"] = iptc_rule.counters
    return _filter_empty_field(d)


# -- internals --------------------------------------------------------------------

def _iptc_table_available(table: str, ipv6: bool = False) -> bool:
    try:
        Table6(table) if ipv6 else Table(table)
        return True
    except Exception:
        return False


def _iptc_gettables(ipv6: bool = False) -> list:
    if ipv6:
        return []
    return [_iptc_gettable(t) for t in Table.ALL
            if is_table_available(t) and _iptc_table_available(t)]


def _iptc_gettable(table: str, ipv6: bool = False) -> Table:
    """The table, committed and read again (outside a batch)."""
    iptc_table = Table6(table) if ipv6 else Table(table)
    if _BATCH_MODE is False:
        iptc_table.commit()
        iptc_table.refresh()
    return iptc_table


def _iptc_getchain(table: str, chain: str, ipv6: bool = False, raise_exc: bool = True) -> Chain:
    try:
        iptc_table = _iptc_gettable(table, ipv6)
        if not iptc_table.is_chain(chain):
            raise AttributeError(f"Table <{table}> has no chain <{chain}>")
        return Chain(iptc_table, chain)
    except Exception:
        if raise_exc:
            raise
    return None  # type: ignore[return-value]


def _iptc_setmatch(iptc_rule: Rule, name: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for inner in value:
            _iptc_setmatch(iptc_rule, name, inner)
    elif isinstance(value, dict):
        match = iptc_rule.create_match(name)
        for k, v in value.items():
            match.set_parameter(k, v)
    else:
        iptc_rule.create_match(name).set_parameter(name, value)


def _iptc_settarget(iptc_rule: Rule, value: Any) -> None:
    if isinstance(value, dict):
        t_name, t_value = next(iter(value.items()))
        if t_name == "goto":
            iptc_rule.create_target(t_value, goto=True)
        else:
            target = iptc_rule.create_target(t_name)
            for k, v in t_value.items():
                target.set_parameter(k, v)
    else:
        iptc_rule.create_target(value)


def _batch_begin_table(table: str, ipv6: bool = False) -> Table:
    iptc_table = _iptc_gettable(table, ipv6)
    iptc_table.autocommit = False
    return iptc_table


def _batch_end_table(table: str, ipv6: bool = False) -> Table:
    """Commit the table's batch and go back to autocommit (unless inside
    batch_begin()/batch_end(), which commits it all at its end)."""
    iptc_table = Table6(table) if ipv6 else Table(table)
    if _BATCH_MODE:
        return iptc_table
    iptc_table.commit()
    iptc_table.autocommit = True
    return iptc_table


def _filter_empty_field(data_d: dict) -> dict:
    """[] -> '', [x] -> x, recursively (python-iptables' dictionary form)."""
    for k, v in data_d.items():
        if isinstance(v, dict):
            data_d[k] = _filter_empty_field(v)
        elif isinstance(v, list) and len(v) != 0:
            v = [_filter_empty_field(x) if isinstance(x, dict) else x for x in v]
        if isinstance(v, list) and len(v) == 1:
            data_d[k] = v.pop()
        elif isinstance(v, list) and len(v) == 0:
            data_d[k] = ""
    return data_d


def _netmask_v4_to_cidr(netmask: str) -> int:
    return sum(bin(int(x)).count("1") for x in netmask.split("."))
