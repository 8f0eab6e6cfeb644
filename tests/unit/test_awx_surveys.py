"""The job templates and workflow of awx/ against the playbooks they run (issue 11, part 4).

What awx/configure.yml would send AWX (its render mode) is checked against the playbooks:

- every survey question is a variable the playbook reads (a Jinja reference anywhere in it or in the
  playbooks it imports), that it does not set itself (an extra variable would override its choice),
  and whose type is the type the playbook's readers declare (role argument specs, module options);
- the choices are what the playbook accepts (the services that have instances in the environment's
  inventory), and a text's limits are the rule's (a version);
- a workflow asks only what every node's job template asks (its answers reach every node);
- each survey spec is one AWX accepts (its own checks, from awx/api/views);
- a wrong answer is refused by the playbook's own validation, as an AWX job, before any host is
  touched: the job fails on the controller, in its first play, with a message naming the answer;
- the checks fail on a broken copy of awx/, and `make lint` reports a wrong awx.awx argument.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.parsing.mod_args import ModuleArgsParser
from jinja2 import meta

from ansible_collections.berth.fleet.plugins.module_utils.common.rules import VERSION_MAX, version_problem
from tests.awx import ROOT, Awx, prepare, render_awx_plan
from tests.collection import BIN, outside_env
from tools.inventory_json import inventory_list

# AWX's question types (awx/main/constants.py SURVEY_TYPE_MAPPING) as Ansible argument types
SURVEY_TYPES = {
    "text": "str",
    "textarea": "str",
    "password": "str",
    "multiplechoice": "str",
    "multiselect": "list",
    "integer": "int",
    "float": "float",
}
# what AWX wants a default of each (awx/main/constants.py SURVEY_TYPE_MAPPING)
PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "list": str,
    "int": int,
    "float": (float, int),
}
ALSO_STR = {"path"}  # argument types a string answer satisfies
CONDITIONALS = ("when", "failed_when", "changed_when", "until")
# an answer each variable's playbook must refuse; a new question needs one here
WRONG_ANSWERS = {"service": "no-such-service", "version": "v2 beta"}
# the longest text a variable's rule accepts
TEXT_MAX = {"version": VERSION_MAX}


class _Any(dict[str, Any]):
    """Every filter and test name is known: only which variables a template reads matters here."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> Any:
        return lambda value, *args, **kwargs: value

    def get(self, name: str, default: Any = None) -> Any:
        return self[name]


_JINJA = jinja2.Environment()
_JINJA.filters = _Any()
_JINJA.tests = _Any()


# -- what a playbook reads, declares and sets ------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    where: str
    declared: str | None  # the type its reader declares (a role argument, a module option), if any


@dataclass
class Uses:
    reads: dict[str, list[Reader]] = field(default_factory=lambda: defaultdict(list))
    sets: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def references(value: Any, bare: bool = False) -> set[str]:
    """The variables a templated value (or a bare conditional) reads."""
    if isinstance(value, dict):
        return set().union(*(references(v, bare) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(references(v, bare) for v in value))
    if not isinstance(value, str):
        return set()
    text = f"{{{{ {value} }}}}" if bare else value
    if "{{" not in text and "{%" not in text:
        return set()
    return set(meta.find_undeclared_variables(_JINJA.parse(text)))


def role_options(root: Path, role: str, entry: str) -> dict[str, Any]:
    """The options of a collection role's entry point (its meta/argument_specs.yml)."""
    name = role.removeprefix("berth.fleet.")
    specs = root / "roles" / name / "meta" / "argument_specs.yml"
    if "." in name or not specs.is_file():
        return {}
    entries = yaml.safe_load(specs.read_text())["argument_specs"]
    return dict((entries.get(entry) or {}).get("options") or {})


def module_options(root: Path, module: str) -> dict[str, Any] | None:
    """The options of one of the collection's modules, from its DOCUMENTATION; None for others."""
    if not module.startswith("berth.fleet."):
        return None
    source = (root / "plugins" / "modules" / f"{module.removeprefix('berth.fleet.')}.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCUMENTATION":
            return dict(yaml.safe_load(ast.literal_eval(node.value))["options"])
    return None


def tasks_of(block: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for task in block or []:
        found.append(task)
        for key in ("block", "rescue", "always"):
            found += tasks_of(task.get(key, []))
    return found


def action_of(task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A task's module and arguments, as Ansible parses them (a block has neither)."""
    if "block" in task:
        return "block", {}
    action, args, _delegate_to = ModuleArgsParser(task).parse(skip_action_validation=True)
    return str(action), dict(args or {})


def uses_of(playbook: Path, root: Path, uses: Uses | None = None) -> Uses:
    """Where ``playbook`` (and what it imports) reads and sets variables."""
    uses = Uses() if uses is None else uses
    rel = playbook.relative_to(root)
    for number, play in enumerate(yaml.safe_load(playbook.read_text()), start=1):
        imported = play.get("ansible.builtin.import_playbook", play.get("import_playbook"))
        if imported:
            target = (playbook.parent / imported).resolve()
            for name, value in (play.get("vars") or {}).items():
                uses.sets[name].append(f"{rel}: the vars of its import of {target.name}")
                for ref in references(value):
                    uses.reads[ref].append(Reader(f"{rel}: import {target.name} vars.{name}", None))
            uses_of(target, root, uses)
            continue
        where = f"{rel}: play {number}"
        tasks = tasks_of(play.get("pre_tasks", []) + play.get("tasks", []) + play.get("post_tasks", []))
        parsed = [(task, *action_of(task)) for task in tasks]
        roles = [
            (args["name"], str(args.get("tasks_from", "main")).removesuffix(".yml"))
            for _task, action, args in parsed
            if action in ("ansible.builtin.include_role", "ansible.builtin.import_role")
        ]
        for key in ("hosts",):
            for ref in references(play.get(key)):
                uses.reads[ref].append(Reader(f"{where} {key}", None))
        for name, value in (play.get("vars") or {}).items():
            types: set[str | None] = {
                role_options(root, role, entry)[name].get("type", "str")
                for role, entry in roles
                if name in role_options(root, role, entry)
            }
            for ref in references(value):
                for type_ in types or {None}:
                    uses.reads[ref].append(Reader(f"{where} vars.{name}", type_))
        for task, action, args in parsed:
            options = module_options(root, action)
            for name, value in args.items():
                declared = options.get(name, {}).get("type", "str") if options is not None else None
                for ref in references(value, bare=action == "ansible.builtin.assert" and name == "that"):
                    uses.reads[ref].append(
                        Reader(f"{where} task {task.get('name')!r} {action}.{name}", declared)
                    )
            for key in CONDITIONALS:
                for ref in references(task.get(key), bare=True):
                    uses.reads[ref].append(Reader(f"{where} task {task.get('name')!r} {key}", None))
            for ref in references({k: v for k, v in task.items() if k in ("vars", "loop")}):
                uses.reads[ref].append(Reader(f"{where} task {task.get('name')!r}", None))
            if action == "ansible.builtin.set_fact":
                for name in args:
                    uses.sets[name].append(f"{where} task {task.get('name')!r} (set_fact)")
            if task.get("register"):
                uses.sets[task["register"]].append(f"{where} task {task.get('name')!r} (register)")
    return uses


# -- the checks ------------------------------------------------------------------------------------


def awx_spec_errors(survey: dict[str, Any]) -> list[str]:
    """What AWX's API refuses of a survey spec (awx/api/views JobTemplateSurveySpec._validate_spec_data)."""
    errors = [
        f"'{key}' missing or not a {kind.__name__}"
        for key, kind in (("name", str), ("description", str), ("spec", list))
        if not isinstance(survey.get(key), kind)
    ]
    if errors:
        return errors
    if not survey["spec"]:
        return ["'spec' doesn't contain any items"]
    seen: set[str] = set()
    for index, question in enumerate(survey["spec"]):
        for key, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool)):
            if not isinstance(question.get(key), kind):
                errors.append(f"question {index}: '{key}' missing or not a {kind.__name__}")
        if question.get("variable") in seen:
            errors.append(f"question {index}: variable {question['variable']!r} twice")
        seen.add(question.get("variable"))
        qtype = question.get("type")
        if qtype not in SURVEY_TYPES:
            errors.append(f"question {index}: type {qtype!r} is not an AWX question type")
            continue
        python = PYTHON_TYPES[SURVEY_TYPES[qtype]]
        if question.get("default", "") != "" and not isinstance(question["default"], python):
            errors.append(f"question {index}: default {question['default']!r} is not a {qtype}")
        for key in ("min", "max"):
            if question.get(key) is not None and not isinstance(question[key], int):
                errors.append(f"question {index}: {key} is not an integer")
        if qtype in ("multiplechoice", "multiselect"):
            if "choices" not in question:
                errors.append(f"question {index}: a {qtype} without choices")
            elif question.get("default") and question["default"] not in question["choices"]:
                errors.append(f"question {index}: default {question['default']!r} is not one of its choices")
    return errors


def question_problems(
    where: str, question: dict[str, Any], uses: Uses, accepted: dict[str, list[str]]
) -> list[str]:
    """What is wrong with one question of a job template, against the playbook it runs."""
    variable, qtype = question["variable"], question["type"]
    where = f"{where}: question {variable!r}"
    problems = []
    if variable not in uses.reads:
        problems.append(f"{where}: the playbook never reads {variable}")
    if variable in uses.sets:
        problems.append(
            f"{where}: the playbook sets {variable} itself ({'; '.join(uses.sets[variable])}), "
            "and an answer would override it"
        )
    declared = [reader for reader in uses.reads.get(variable, []) if reader.declared]
    if variable in uses.reads and not declared:
        problems.append(f"{where}: no role argument or module option of the playbook declares a type for it")
    wanted = SURVEY_TYPES.get(qtype)
    mismatched = [
        reader
        for reader in declared
        if reader.declared not in (wanted, "raw") and not (wanted == "str" and reader.declared in ALSO_STR)
    ]
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        problems.append(
            f"{where}: its answer's type is {qtype}, but {mismatched[0].where}{more} takes {mismatched[0].declared}"
        )
    if qtype in ("multiplechoice", "multiselect"):
        if variable not in accepted:
            problems.append(f"{where}: nothing says what the playbook accepts for {variable}")
        elif sorted(question.get("choices", [])) != sorted(accepted[variable]):
            problems.append(
                f"{where}: choices {question.get('choices')} but the playbook accepts {accepted[variable]}"
            )
    limit = TEXT_MAX.get(variable)
    if qtype in ("text", "textarea") and limit is not None and not 0 < int(question.get("max") or 0) <= limit:
        problems.append(f"{where}: max {question.get('max')} but the rule allows at most {limit}")
    if variable == "version" and question.get("default") and version_problem(question["default"]):
        problems.append(f"{where}: its default {question['default']!r} is not a version")
    if variable not in WRONG_ANSWERS:
        problems.append(f"{where}: no wrong answer to try on the playbook: add one to WRONG_ANSWERS")
    return problems


def survey_problems(
    plan: dict[str, dict[str, Any]], accepted: dict[str, dict[str, list[str]]], root: Path
) -> list[str]:
    """Every mismatch between awx/'s surveys and the playbooks under ``root``."""
    problems = []
    for env, entry in plan.items():
        templates = {template["name"]: template for template in entry["job_templates"]}
        for template in entry["job_templates"]:
            survey = template["survey_spec"]
            if not survey:
                continue
            problems += [f"{template['name']}: {error}" for error in awx_spec_errors(survey)]
            uses = uses_of(root / template["playbook"], root)
            for question in survey.get("spec", []):
                problems += question_problems(template["name"], question, uses, accepted[env])
        workflow = entry["workflow"]
        problems += [f"{workflow['name']}: {error}" for error in awx_spec_errors(workflow["survey_spec"])]
        for node in workflow["nodes"]:
            template = templates.get(node["job_template"])
            if template is None:
                problems.append(
                    f"{workflow['name']}: node {node['identifier']} runs {node['job_template']!r}, not a job template of awx/"
                )
                continue
            asked = {q["variable"]: q for q in (template["survey_spec"] or {}).get("spec", [])}
            for question in workflow["survey_spec"]["spec"]:
                mine = asked.get(question["variable"])
                if mine is None:
                    problems.append(
                        f"{workflow['name']}: its answer to {question['variable']!r} reaches node {node['identifier']} "
                        f"({template['playbook']}), whose job template does not ask it"
                    )
                elif {k: mine.get(k) for k in ("type", "choices")} != {
                    k: question.get(k) for k in ("type", "choices")
                }:
                    problems.append(
                        f"{workflow['name']}: its question {question['variable']!r} is not the one node "
                        f"{node['identifier']} ({template['name']}) asks"
                    )
    return problems


def accepted_answers(listing: dict[str, Any]) -> dict[str, list[str]]:
    """What the playbooks accept, from an environment's inventory: a service that has instances."""
    services = [
        name.removeprefix("svc_")
        for name, group in listing.items()
        if name.startswith("svc_") and group.get("hosts")
    ]
    return {"service": services}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    rendered = render_awx_plan(tmp_path_factory.mktemp("plan") / "plan.json")
    return {entry["environment"]: entry for entry in rendered}


@pytest.fixture(scope="module")
def listings(plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``ansible-inventory --list`` of each environment awx/ configures."""
    return {env: inventory_list(ROOT / "inventories" / env) for env in plan}


@pytest.fixture(scope="module")
def accepted(listings: dict[str, dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    return {env: accepted_answers(listing) for env, listing in listings.items()}


def test_every_environment_has_its_inventory_instance_groups_and_templates(
    plan: dict[str, dict[str, Any]], listings: dict[str, dict[str, Any]]
) -> None:
    assert sorted(plan) == sorted(p.parent.name for p in (ROOT / "inventories").glob("*/topology.berth.yml"))
    for env, entry in plan.items():
        listing = listings[env]
        datacenters = list(next(iter(listing["_meta"]["hostvars"].values()))["berth_datacenters"])
        assert sorted(entry["instance_groups"]) == sorted(f"{env}-{dc}" for dc in datacenters)
        assert entry["inventory_source"]["source_path"] == f"inventories/{env}"
        verbs = {template["verb"]: template for template in entry["job_templates"]}
        assert set(verbs) >= {"provision", "deploy", "rollback", "reconcile"}
        for verb, template in verbs.items():
            assert (ROOT / template["playbook"]).is_file(), template["playbook"]
            assert template["playbook"] == f"playbooks/{verb}.yml"
        # deploy, and on its failure rollback
        nodes = {node["identifier"]: node for node in entry["workflow"]["nodes"]}
        assert nodes["deploy"]["job_template"] == verbs["deploy"]["name"]
        assert nodes["deploy"]["failure_nodes"] == ["rollback"]
        assert nodes["rollback"]["job_template"] == verbs["rollback"]["name"]
        assert list(nodes).index("rollback") < list(nodes).index(
            "deploy"
        )  # made before the node leading to it
        assert "Berth job environment" in entry["credentials"]
        # reconcile per DC (apply.yml: one job template each, on the instance group <env>-<dc>)
        assert entry["datacenters"] == datacenters


def test_every_survey_question_is_read_typed_and_offered_as_its_playbook_accepts(
    plan: dict[str, dict[str, Any]], accepted: dict[str, dict[str, list[str]]]
) -> None:
    assert survey_problems(plan, accepted, ROOT) == []
    questions = sum(len(t["survey_spec"].get("spec", [])) for e in plan.values() for t in e["job_templates"])
    assert questions >= 4 * len(plan)  # deploy (2), rollback, reconcile: the check had something to check


def break_awx(awx_copy: Path) -> None:
    """Five mistakes in a copy of awx/job_templates.yml."""
    path = awx_copy / "job_templates.yml"
    text = path.read_text()
    # 1. a service the environment does not run, offered everywhere the service question is
    text = text.replace(
        'choices: "{{ berth_awx_services }}"', "choices: \"{{ berth_awx_services + ['payments'] }}\""
    )
    # 2. the version asked as a number
    text = text.replace(
        "          variable: version\n          type: text",
        "          variable: version\n          type: integer",
    )
    data = yaml.safe_load(text)
    templates = {t["verb"]: t for t in data["berth_awx_job_templates"]}
    # 3. rollback asks a variable its playbook never reads
    templates["rollback"]["survey_spec"]["spec"][0] = dict(
        templates["rollback"]["survey_spec"]["spec"][0], variable="svc"
    )
    # 4. reconcile asks the version, which reconcile.yml decides itself
    templates["reconcile"]["survey_spec"]["spec"].append(dict(templates["deploy"]["survey_spec"]["spec"][1]))
    # 5. the workflow asks the version too: it would reach its rollback node
    data["berth_awx_workflow"]["survey_spec"]["spec"].append(
        dict(templates["deploy"]["survey_spec"]["spec"][1])
    )
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))


def test_the_check_fails_on_a_broken_copy_of_awx(
    tmp_path: Path, accepted: dict[str, dict[str, list[str]]]
) -> None:
    shutil.copytree(ROOT / "awx", tmp_path / "awx")
    shutil.copytree(ROOT / "inventories", tmp_path / "inventories")
    break_awx(tmp_path / "awx")
    broken = {e["environment"]: e for e in render_awx_plan(tmp_path / "plan.json", tmp_path / "awx")}
    problems = "\n".join(survey_problems(broken, accepted, ROOT))
    for expected in (
        "Berth prod deploy: question 'service': choices ['catalog', 'orders', 'payments'] but the playbook accepts ['catalog', 'orders']",
        "Berth lab-vm deploy: question 'service': choices ['catalog', 'payments'] but the playbook accepts ['catalog']",
        "Berth prod deploy: question 'version': its answer's type is integer, but playbooks/deploy.yml: play 1 vars.rollout_version (and 2 more) takes str",
        "Berth prod rollback: question 'svc': the playbook never reads svc",
        "Berth prod reconcile: question 'version': the playbook sets version itself (playbooks/reconcile.yml: the vars of its import of deploy.yml)",
        "Berth prod deploy, rollback on failure: its answer to 'version' reaches node rollback (playbooks/rollback.yml), whose job template does not ask it",
    ):
        assert expected in problems, problems


@pytest.fixture(scope="module")
def awx(tmp_path_factory: pytest.TempPathFactory) -> Awx:
    return prepare(tmp_path_factory.mktemp("awx"))


def test_a_wrong_answer_is_refused_by_the_playbook_before_any_host_is_touched(
    awx: Awx, tmp_path: Path
) -> None:
    """Each question's wrong answer, given to its job template's playbook as an AWX job on prod's
    AWX-imported inventory: the job fails on the controller, in the playbook's first play, and the
    failed task's message names the answer. AWX refuses an answer outside the choices itself; this
    is the playbook's own refusal, the one a launch through the API with extra variables meets."""
    exported = awx.import_inventory("prod", awx.pdd(tmp_path / "update"))
    tried = set()
    for template in awx.plan["prod"]["job_templates"]:
        questions = (template["survey_spec"] or {}).get("spec", [])
        for question in questions:
            if (template["playbook"], question["variable"]) in tried:
                continue
            tried.add((template["playbook"], question["variable"]))
            wrong = WRONG_ANSWERS[question["variable"]]
            assert wrong not in question.get("choices", [])
            answers = {q["variable"]: q["choices"][0] for q in questions if q.get("required")}
            answers[question["variable"]] = wrong
            job = awx.pdd(tmp_path / f"job-{len(tried)}")
            job.write_job_inventory(exported)
            run = job.job(template["playbook"], answers, awx.injected("prod"), ident=str(len(tried)))
            where = f"{template['playbook']} with {answers}"
            assert run.status == "failed", f"{where}: not refused\n{run.stdout[-3000:]}"
            assert run.hosts() == {"localhost"}, f"{where}: touched {run.hosts()}"
            (failure,) = run.of("runner_on_failed")
            first_play = yaml.safe_load((awx.project / template["playbook"]).read_text())[0]["name"]
            assert failure["host"] == "localhost" and failure["play"] == first_play, where
            assert wrong in failure["res"]["msg"], f"{where}: {failure['res']['msg']}"
    assert len(tried) == 4  # deploy's service and version, rollback's and reconcile's service


def test_make_lint_reports_a_wrong_awx_awx_argument(tmp_path: Path) -> None:
    """`make lint` checks awx/'s module arguments against the awx.awx modules' own specs: its command,
    run on a copy of awx/ with a misspelt argument and a value outside a module's choices, fails on both."""
    dry = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "lint"], capture_output=True, text=True, check=True
    ).stdout
    lines = dry.replace("\\\n", " ").splitlines()
    # what make runs first to make awx.awx visible (idempotent), then the check of awx/
    setup = [
        line
        for line in lines
        if "classic_collections" in line or "lint-collections/ansible_collections" in line
    ]
    (command,) = [
        line for line in lines if line.startswith("ANSIBLE_COLLECTIONS_PATH=") and line.endswith(" awx")
    ]
    env = outside_env(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}"
    )  # as make runs it: the venv's tools first
    for line in setup:
        subprocess.run(line, shell=True, cwd=ROOT, env=env, check=True, capture_output=True)
    shutil.copytree(ROOT / "awx", tmp_path / "awx")
    shutil.copy(ROOT / ".ansible-lint", tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # ansible-lint's project root
    apply = tmp_path / "awx" / "tasks" / "apply.yml"
    text = apply.read_text()
    text = text.replace("    survey_enabled: true\n", "    survey_enable: true\n", 1)
    text = text.replace("    scm_type: git\n", "    scm_type: github\n")
    apply.write_text(text)
    lint = subprocess.run(
        command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    output = lint.stdout + lint.stderr
    assert lint.returncode != 0, output
    assert re.search(r"args\[module\]: Unsupported parameters for .*: survey_enable\.", output), output
    assert (
        "args[module]: value of scm_type must be one of: manual, git, svn, insights, archive, got: github"
        in output
    )
