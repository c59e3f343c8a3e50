"""Permanent IBSI-1 identifiers of the features and of the aggregation methods.

Feature keys are the IBSI short names (``cm.joint.max``); aggregation tokens name
the texture aggregation (``2d_avg`` ...). ``ibsi_code`` is ``FEATURE:AGGREGATION``
for texture features and the bare feature code otherwise (IVH percentages carry
their parameter, e.g. ``BC2M_V10``), as in the IBSI-1 digital phantom reference
table.

Three features have no usable identifier in the manual and get an empty code:
the intensity-histogram 10th percentile (the manual prints ``1PR8``, which is the
code of the minimum, and other tools use ``GPMT``, which the manual gives to the
90th percentile). Small zone emphasis is given its permanent code ``5QRC``
(DICOM CID 7476), which the parsed manual table lacks.
"""

from __future__ import annotations

#: Aggregation token -> IBSI identifier.
AGGREGATION_CODES: dict[str, str] = {
    "2d_avg": "BTW3",      # 2D, averaged over slices and directions
    "2d_smrg": "SUJT",     # 2D, directions merged per slice, averaged over slices
    "2.5d_dmrg": "JJUI",   # 2.5D, slices merged per direction, averaged over directions
    "2.5d_vmrg": "ZW7Z",   # 2.5D, all slices and directions merged
    "3d_avg": "ITBB",      # 3D, averaged over directions
    "3d_vmrg": "IAZD",     # 3D, all directions merged
    "2d": "8QNN",          # 2D, averaged over slices
    "2.5d": "62GR",        # 2.5D, slices merged
    "3d": "KOBO",          # 3D
}

#: Family prefix -> (family name, IBSI family identifier).
FAMILIES: dict[str, tuple[str, str]] = {
    "morph": ("morphology", "HCUG"),
    "loc": ("local intensity", "9ST6"),
    "stat": ("intensity statistics", "UHIW"),
    "ih": ("intensity histogram", "ZVCW"),
    "ivh": ("intensity-volume histogram", "P88C"),
    "cm": ("grey level co-occurrence matrix", "LFYI"),
    "rlm": ("grey level run length matrix", "TP0I"),
    "szm": ("grey level size zone matrix", "9SAK"),
    "dzm": ("grey level distance zone matrix", "VMDZ"),
    "ngt": ("neighbourhood grey tone difference matrix", "IPET"),
    "ngl": ("neighbouring grey level dependence matrix", "REK0"),
}

FEATURE_CODES: dict[str, str] = {
    # morphology
    "morph.vol": "RNU0", "morph.approx.vol": "YEKZ", "morph.area": "C0JK", "morph.av": "2PR5",
    "morph.comp.1": "SKGS", "morph.comp.2": "BQWJ", "morph.sph.dispr": "KRCK", "morph.sphericity": "QCFX",
    "morph.asphericity": "25C7", "morph.com": "KLMA", "morph.diam": "L0JK", "morph.pca.major": "TDIC",
    "morph.pca.minor": "P9VJ", "morph.pca.least": "7J51", "morph.pca.elongation": "Q3CK",
    "morph.pca.flatness": "N17B", "morph.v.dens.aabb": "PBX1", "morph.a.dens.aabb": "R59B",
    "morph.v.dens.ombb": "ZH1A", "morph.a.dens.ombb": "IQYR",
    "morph.v.dens.aee": "6BDE", "morph.a.dens.aee": "RDD2",
    "morph.v.dens.mvee": "SWZ1", "morph.a.dens.mvee": "BRI8",
    "morph.v.dens.conv.hull": "R3ER", "morph.a.dens.conv.hull": "7T7F", "morph.integ.int": "99N0",
    "morph.moran.i": "N365", "morph.geary.c": "NPT7",
    # local intensity
    "loc.peak.local": "VJGA", "loc.peak.global": "0F91",
    # intensity statistics
    "stat.mean": "Q4LE", "stat.var": "ECT3", "stat.skew": "KE2A", "stat.kurt": "IPH6", "stat.median": "Y12H",
    "stat.min": "1GSF", "stat.p10": "QG58", "stat.p90": "8DWT", "stat.max": "84IY", "stat.iqr": "SALO",
    "stat.range": "2OJQ", "stat.mad": "4FUA", "stat.rmad": "1128", "stat.medad": "N72L", "stat.cov": "7TET",
    "stat.qcod": "9S40", "stat.energy": "N8CA", "stat.rms": "5ZWQ",
    # intensity histogram
    "ih.mean": "X6K6", "ih.var": "CH89", "ih.skew": "88K1", "ih.kurt": "C3I7", "ih.median": "WIFQ",
    "ih.min": "1PR8", "ih.p10": "", "ih.p90": "GPMT", "ih.max": "3NCY", "ih.mode": "AMMC", "ih.iqr": "WR0O",
    "ih.range": "5Z3W", "ih.mad": "D2ZX", "ih.rmad": "WRZB", "ih.medad": "4RNL", "ih.cov": "CWYJ",
    "ih.qcod": "SLWD", "ih.entropy": "TLU2", "ih.uniformity": "BJ5W", "ih.max.grad": "12CE",
    "ih.max.grad.gl": "8E6O", "ih.min.grad": "VQB3", "ih.min.grad.gl": "RHQZ",
    # intensity-volume histogram
    "ivh.v10": "BC2M_V10", "ivh.v90": "BC2M_V90", "ivh.i10": "GBPN_I10", "ivh.i90": "GBPN_I90",
    "ivh.v10minusv90": "DDTU", "ivh.i10minusi90": "CNV2", "ivh.auc": "9CMM",
    # GLCM
    "cm.joint.max": "GYBY", "cm.joint.avg": "60VM", "cm.joint.var": "UR99", "cm.joint.entr": "TU9B",
    "cm.diff.avg": "TF7R", "cm.diff.var": "D3YU", "cm.diff.entr": "NTRS", "cm.sum.avg": "ZGXS",
    "cm.sum.var": "OEEB", "cm.sum.entr": "P6QZ", "cm.energy": "8ZQL", "cm.contrast": "ACUI",
    "cm.dissimilarity": "8S9J", "cm.inv.diff": "IB1Z", "cm.inv.diff.norm": "NDRX", "cm.inv.diff.mom": "WF0Z",
    "cm.inv.diff.mom.norm": "1QCO", "cm.inv.var": "E8JP", "cm.corr": "NI2N", "cm.auto.corr": "QWB0",
    "cm.clust.tend": "DG8W", "cm.clust.shade": "7NFM", "cm.clust.prom": "AE86", "cm.info.corr.1": "R8DG",
    "cm.info.corr.2": "JN9H",
    # GLRLM
    "rlm.sre": "22OV", "rlm.lre": "W4KF", "rlm.lgre": "V3SW", "rlm.hgre": "G3QZ", "rlm.srlge": "HTZT",
    "rlm.srhge": "GD3A", "rlm.lrlge": "IVPO", "rlm.lrhge": "3KUM", "rlm.glnu": "R5YN", "rlm.glnu.norm": "OVBL",
    "rlm.rlnu": "W92Y", "rlm.rlnu.norm": "IC23", "rlm.r.perc": "9ZK5", "rlm.gl.var": "8CE5",
    "rlm.rl.var": "SXLW", "rlm.rl.entr": "HJ9O",
    # GLSZM
    "szm.sze": "5QRC", "szm.lze": "48P8", "szm.lgze": "XMSY", "szm.hgze": "5GN9", "szm.szlge": "5RAI",
    "szm.szhge": "HW1V", "szm.lzlge": "YH51", "szm.lzhge": "J17V", "szm.glnu": "JNSA", "szm.glnu.norm": "Y1RO",
    "szm.zsnu": "4JP3", "szm.zsnu.norm": "VB3A", "szm.z.perc": "P30P", "szm.gl.var": "BYLV",
    "szm.zs.var": "3NSA", "szm.zs.entr": "GU8N",
    # GLDZM
    "dzm.sde": "0GBI", "dzm.lde": "MB4I", "dzm.lgze": "S1RA", "dzm.hgze": "K26C", "dzm.sdlge": "RUVG",
    "dzm.sdhge": "DKNJ", "dzm.ldlge": "A7WM", "dzm.ldhge": "KLTH", "dzm.glnu": "VFT7", "dzm.glnu.norm": "7HP3",
    "dzm.zdnu": "V294", "dzm.zdnu.norm": "IATH", "dzm.z.perc": "VIWW", "dzm.gl.var": "QK93",
    "dzm.zd.var": "7WT1", "dzm.zd.entr": "GBDU",
    # NGTDM
    "ngt.coarseness": "QCDE", "ngt.contrast": "65HE", "ngt.busyness": "NQ30", "ngt.complexity": "HDEZ",
    "ngt.strength": "1X9X",
    # NGLDM
    "ngl.lde": "SODN", "ngl.hde": "IMOQ", "ngl.lgce": "TL9H", "ngl.hgce": "OAE7", "ngl.ldlge": "EQ3F",
    "ngl.ldhge": "JA6D", "ngl.hdlge": "NBZI", "ngl.hdhge": "9QMG", "ngl.glnu": "FP8K", "ngl.glnu.norm": "5SPA",
    "ngl.dcnu": "Z87G", "ngl.dcnu.norm": "OKJI", "ngl.dc.perc": "6XV8", "ngl.gl.var": "1PFV",
    "ngl.dc.var": "DNX2", "ngl.dc.entr": "FCBV", "ngl.dc.energy": "CAS9",
}


def ibsi_code(feature: str, aggregation: str = "") -> str:
    """``FEATURE_CODE[:AGGREGATION_CODE]`` for a feature key and aggregation token.

    An empty string when the feature has no usable identifier.
    """
    code = FEATURE_CODES[feature]
    if not code:
        return ""
    if aggregation:
        return f"{code}:{AGGREGATION_CODES[aggregation]}"
    return code
