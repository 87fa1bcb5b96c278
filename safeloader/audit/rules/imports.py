"""SL1xx: what the code imports, against the policy's allow and deny lists, and how it imports it."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "imports"

RULES = (
    Rule(
        "SL101",
        "import-not-allowed",
        "high",
        829,
        "imports {detail}, which is not in the policy's allow_imports list",
        FAMILY,
    ),
    Rule(
        "SL102", "import-denied", "high", 829, "imports {detail}, which the policy's deny_imports list forbids", FAMILY
    ),
    Rule(
        "SL103",
        "dynamic-import",
        "high",
        470,
        "imports a module chosen at run time ({detail}) instead of with an import statement",
        FAMILY,
    ),
    Rule(
        "SL104",
        "import-leaves-root",
        "high",
        22,
        "relative import {detail} reaches outside the audited pipeline directory",
        FAMILY,
    ),
    Rule(
        "SL105",
        "import-missing",
        "medium",
        829,
        "relative import {detail} names a file that is not part of the audited pipeline",
        FAMILY,
    ),
    Rule(
        "SL106",
        "import-machinery",
        "medium",
        470,
        "uses the import machinery ({detail}), which can load code that was never audited",
        FAMILY,
    ),
)

#: Import functions whose call with a plain constant module name is an ordinary import, not SL103.
CONSTANT_NAME_IMPORTERS = frozenset({"importlib.import_module"})

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    # ``import importlib`` alone loads nothing: ``import_module`` with a constant name is an ordinary import
    # (the analyzer applies the import policy to that name); its file and spec loaders are findings.
    modules={
        "importlib.util": "SL106",
        "importlib.machinery": "SL106",
        "importlib.abc": "SL106",
        "imp": "SL106",
        "zipimport": "SL106",
        "pkgutil": "SL106",
    },
    references={
        "__import__": "SL103",
        "builtins.__import__": "SL103",
        "importlib.import_module": "SL103",
        "importlib.__import__": "SL103",
        "imp.load_source": "SL103",
        "imp.load_module": "SL103",
        "importlib.util.spec_from_file_location": "SL103",
        "importlib.util.module_from_spec": "SL103",
        "importlib.machinery.SourceFileLoader": "SL103",
        "importlib.machinery.SourcelessFileLoader": "SL103",
        "importlib.machinery.ExtensionFileLoader": "SL103",
        "pkgutil.get_importer": "SL106",
        "zipimport.zipimporter": "SL103",
        "sys.path_hooks": "SL106",
        "sys.meta_path": "SL106",
    },
)
