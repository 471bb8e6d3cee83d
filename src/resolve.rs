//! Declared models -> [`DesiredModel`]s: revision -> commit, file list, selection, routing.
#[allow(unused_imports)]
use crate::plan::DesiredModel;
