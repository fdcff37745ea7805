//! Domain model and JSON report types of balena-release-update.
