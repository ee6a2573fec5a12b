"""Offline `sam package` + SAM transform: local code folders become S3 objects, SAM becomes CloudFormation."""

from __future__ import annotations

import copy
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml
from samtranslator.internal.managed_policies import get_bundled_managed_policy_map
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

ARTIFACT_BUCKET = "embedded-aws-artifacts"


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML loader that reads CloudFormation short-form intrinsics (!Ref, !Sub, !GetAtt, ...)."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    """Read a SAM/CloudFormation template written in YAML (short-form intrinsics allowed) or JSON."""
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_CloudFormationLoader)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a template")
    return loaded


@dataclass
class PackagedTemplate:
    """A SAM template whose local paths point at uploaded artifacts, and where each artifact came from."""

    template: dict[str, Any]
    code_dirs: dict[str, Path] = field(default_factory=dict)  # artifact key -> local folder
    layer_dirs: list[Path] = field(default_factory=list)


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _is_local(uri: Any) -> bool:
    return isinstance(uri, str) and not uri.startswith("s3://")


def package(template: dict[str, Any], template_dir: Path) -> PackagedTemplate:
    """Resolve the local paths the way `sam build && sam package` would, without touching any S3.

    Function CodeUri and layer ContentUri folders get an artifact key (uploaded by `upload_artifacts`);
    a state machine DefinitionUri file is inlined as Definition (SAM then renders DefinitionString).
    """
    packaged = PackagedTemplate(template=copy.deepcopy(template))
    global_code_uri = packaged.template.get("Globals", {}).get("Function", {}).get("CodeUri")
    for logical_id, resource in packaged.template.get("Resources", {}).items():
        properties = resource.setdefault("Properties", {})
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and properties.get("PackageType") != "Image":
            code_uri = properties.get("CodeUri", global_code_uri)
            if _is_local(code_uri):
                key = f"functions/{logical_id}.zip"
                packaged.code_dirs[key] = (template_dir / code_uri).resolve()
                properties["CodeUri"] = f"s3://{ARTIFACT_BUCKET}/{key}"
        elif kind == "AWS::Serverless::LayerVersion" and _is_local(properties.get("ContentUri")):
            key = f"layers/{logical_id}.zip"
            folder = (template_dir / properties["ContentUri"]).resolve()
            packaged.code_dirs[key] = folder
            packaged.layer_dirs.append(folder)
            properties["ContentUri"] = f"s3://{ARTIFACT_BUCKET}/{key}"
        elif kind == "AWS::Serverless::StateMachine" and _is_local(properties.get("DefinitionUri")):
            definition_path = template_dir / properties.pop("DefinitionUri")
            properties["Definition"] = json.loads(definition_path.read_text(encoding="utf-8"))
    return packaged


def upload_artifacts(packaged: PackagedTemplate, s3: Any) -> None:
    """Upload every code folder as a zip, as `sam package` would (Lambda checks the object exists)."""
    s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    for key, folder in packaged.code_dirs.items():
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=_zip_folder(folder))


def translate(template: dict[str, Any], parameters: dict[str, str], region: str) -> dict[str, Any]:
    """SAM -> CloudFormation with aws-sam-translator, offline (bundled managed-policy map, no IAM call)."""
    managed_policies = get_bundled_managed_policy_map("aws") or {}
    translator = Translator(
        managed_policies, Parser(), boto_session=boto3.session.Session(region_name=region)
    )
    return translator.translate(
        copy.deepcopy(template),
        parameter_values=dict(parameters),
        get_managed_policy_map=lambda: managed_policies,
    )
