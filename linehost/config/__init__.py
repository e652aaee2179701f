"""The station configuration: typed models, TOML loading, errors naming file, key and problem.

`types` holds the value types (paths resolved by their type, secret references, VID/PID),
`sections`, `pki` and `outputs` the models of each table, `loading` the file reading and
error reporting.
"""

from linehost.config.loading import ConfigProblems, load_config, parse_config, read_toml, validate
from linehost.config.outputs import DashboardSection, MqttSection, OpcuaSection, SparkplugSection
from linehost.config.pki import EstSection, PkiSection
from linehost.config.placeholders import STEP_PLACEHOLDERS as STEP_FIELDS
from linehost.config.sections import (
    AuditSection,
    DatabaseSection,
    JigSection,
    LabelsSection,
    LineConfig,
    LineSection,
    MetricsSection,
    OnboardingSection,
    ProtocolSection,
    StepsSection,
    StepTimeout,
    WorkOrderSection,
)
from linehost.config.types import (
    ConfigPath,
    SecretRef,
    VidPid,
    parse_listen,
)

__all__ = [
    "STEP_FIELDS",
    "AuditSection",
    "ConfigPath",
    "ConfigProblems",
    "DashboardSection",
    "DatabaseSection",
    "EstSection",
    "JigSection",
    "LabelsSection",
    "LineConfig",
    "LineSection",
    "MetricsSection",
    "MqttSection",
    "OnboardingSection",
    "OpcuaSection",
    "PkiSection",
    "ProtocolSection",
    "SecretRef",
    "SparkplugSection",
    "StepTimeout",
    "StepsSection",
    "VidPid",
    "WorkOrderSection",
    "load_config",
    "parse_config",
    "parse_listen",
    "read_toml",
    "validate",
]
