"""Descriptor cleaning for the Clean Descriptors / Retain Patient Characteristics options.

medflow has no NLP scrubber, so "clean" (action C on a text attribute) is an
allow-list filter:

1. date-like substrings (``2019-03-12``, ``12/03/2019``, ``12.03.19``) and every digit
   run of 4 or more digits (years, MRNs, accession numbers, phone numbers) are deleted;
2. the rest is split into alphanumeric words and separators; a word is kept only if
   it is in :data:`SAFE_WORDS` (case-insensitive; imaging modalities, anatomy, MR/CT/PET
   acquisition and reconstruction terms, RT structure terms, orientation and contrast
   words), or a number of at most 3 digits, optionally followed by a unit
   (``5mm``, ``120kv``, ``3d``); separators among `` _-/+.,:()`` are kept between kept words;
3. if nothing is kept the value is empty.

Names, places, free text and anything not in the vocabulary are dropped. The
vocabulary is deliberately conservative: a word that is also a common given name or
surname is not in it.
"""

from __future__ import annotations

import re

SAFE_WORDS = frozenset("""
CT MR MRI PET SPECT NM US CR DX MG XA RF PT RTSTRUCT SEG RTDOSE RTPLAN REG SR OT
IMAGE IMAGES SERIES STUDY SCAN SCOUT LOCALIZER LOCALISER SURVEY TOPOGRAM PLANNING PLAN MASK
HEAD BRAIN NECK SPINE CSPINE TSPINE LSPINE CHEST THORAX LUNG LUNGS ABDOMEN ABD PELVIS BODY WHOLE WB WHOLEBODY
LIVER KIDNEY KIDNEYS PANCREAS SPLEEN HEART CARDIAC CORONARY AORTA BREAST PROSTATE BLADDER RECTUM
COLON BOWEL STOMACH ESOPHAGUS OESOPHAGUS BONE BONES SKULL ORBIT ORBITS SINUS SINUSES FACE
EXTREMITY EXTREMITIES ARM ARMS LEG LEGS THIGH KNEE ANKLE FOOT HIP HIPS SHOULDER ELBOW WRIST HAND
MUSCLE SOFT TISSUE SKIN FAT WATER NODE NODES LYMPH VESSEL VESSELS UTERUS OVARY CERVIX TESTIS
PAROTID THYROID LARYNX PHARYNX TRACHEA CORD SPINALCORD BRAINSTEM MANDIBLE EYE EYES LENS OPTIC NERVE CHIASM
GTV CTV PTV ITV OAR ROI VOI MASS TUMOR TUMOUR LESION LESIONS NODULE METASTASIS MET EXTERNAL OUTLINE
CONTOUR CONTOURS STRUCTURE STRUCTURES TARGET PRIMARY BOOST RING AVOID PRV
AX AXIAL SAG SAGITTAL COR CORONAL OBL OBLIQUE TRA TRANSVERSE MPR MIP MINIP VR RECON RECONSTRUCTION
REFORMAT THIN THICK SLICE SLICES STANDARD SHARP SMOOTH DETAIL KERNEL FILTER WINDOW LEVEL
HELICAL SPIRAL SEQUENTIAL AXIALMODE DUAL ENERGY DE MONO KEV LOW HIGH DOSE LD ULD CTA CTP PERFUSION
ANGIO ANGIOGRAPHY ARTERIAL VENOUS PORTAL DELAYED PHASE NATIVE PLAIN NONCONTRAST CONTRAST ENHANCED
IV ORAL C W WO WITH WITHOUT PRE POST GAD GD GADO GADOLINIUM BOLUS
T1 T2 T1W T2W T2STAR PD PDW FLAIR STIR DWI DTI ADC EADC TRACE SWI SWAN GRE SE TSE FSE EPI BOLD
MPRAGE SPGR FSPGR BRAVO FIESTA TRUFI VIBE LAVA DIXON IDEAL IN OUT OPP OPPOSED FS FATSAT SAT
SPAIR WATER MAP MAPS B0 B1 FIELDMAP DIFFUSION TENSOR FUNCTIONAL FMRI REST RESTING ASL MRA TOF
PC DYNAMIC DCE DSC SUBTRACTION SUB SUBTRACTED CINE SSFP HASTE HASTE RARE SPACE CUBE VISTA
ISO ISOTROPIC HR HIGHRES NAV BREATHHOLD BH FB FREE BREATHING TRIGGERED GATED
FDG PSMA FLT FET DOTATATE AC NAC CTAC ATTENUATION CORRECTED CORR NONCORR SUV SUVBW QCFX
STATIC EMISSION TRANSMISSION FRAME FRAMES MIN SEC
LEFT RIGHT L R BILATERAL ANTERIOR POSTERIOR SUPERIOR INFERIOR UPPER LOWER MID PROXIMAL DISTAL
A P S I AP PA LAT LATERAL MEDIAL
AND OR OF THE TO FOR ON
ORIGINAL DERIVED SECONDARY PROCESSED RESAMPLED CROPPED REGISTERED NORMALIZED NORMALISED CORRECTED
N4 BIAS MM CM ML KV MAS MS
GE MEDICAL SYSTEMS HEALTHCARE SIEMENS HEALTHINEERS PHILIPS TOSHIBA CANON HITACHI FUJIFILM FUJI AGFA
CARESTREAM KODAK HOLOGIC SAMSUNG MEDISON MINDRAY ESAOTE ELSCINT MARCONI PICKER UNITED IMAGING UIH NEUSOFT
MIM SOFTWARE INC LTD CO CORP CORPORATION GMBH AG BV NV
ST STE RX MI DISCOVERY LIGHTSPEED OPTIMA REVOLUTION SIGNA GENESIS HDXT EXCITE ARCHITECT PIONEER PREMIER
SOMATOM DEFINITION FORCE EDGE FLASH SENSATION EMOTION PERSPECTIVE BIOGRAPH MCT VISION TRUEPOINT
AVANTO AERA SKYRA PRISMA TRIO TIM VERIO VIDA SOLA ALTEA SONATA SYMPHONY ESPREE MAGNETOM ESSENZA
ACHIEVA INGENIA INTERA GEMINI VEREOS BRILLIANCE ICT INGENUITY PANORAMA ELITION
AQUILION ONE PRIME GENESIS CELESTEION VANTAGE TITAN ORIAN GALAN
OSEM OSEM3D TOF PSF VPFX VPHD FBP RAMLA LOR BLOB ITERATIVE ASIR ASIR-V IDOSE IMR ADMIRE SAFIRE IRIS
""".split())

#: coding schemes whose codes are kept verbatim in code sequence items (PS3.16 8.2 and common ones)
KNOWN_CODING_SCHEMES = frozenset("""
DCM SCT SRT SNM3 LN UCUM FMA RADLEX RADELEMENT NCIT NCIt UMLS MSH ICD10 I10 I10P I9C ICD9CM ACR MDC NEU
NICIP ITIS_TSN PUBCHEM_CID CD2 UPC ISO3166_1 ISO639_1 ISO639_2 ISO639_3 HPC RFC5646 CID BARI NCDR
""".split())
_CODE_VALUE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
#: reconstruction kernels such as B30f, Br40d, FC13, I26f, YA, UB
KERNEL_RE = re.compile(r"^(?:[A-Za-z]{1,2}\d{1,3}[a-z]?|[A-Z]{1,3})$")

_DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
_LONG_DIGITS = re.compile(r"\d{4,}")
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9]")
_NUMBER_WITH_UNIT = re.compile(r"^\d{1,3}(MM|CM|ML|KV|KEV|MAS|MS|S|D|T|MIN|H)$")
_BARE_NUMBER = re.compile(r"^\d{1,3}$")
_SEPARATORS = frozenset(" _-/+.,:()")


def is_known_code(scheme: object, value: object) -> bool:
    """True for a code (CodingSchemeDesignator, CodeValue) of a known scheme with a well-formed value."""
    return str(scheme or "").strip() in KNOWN_CODING_SCHEMES and bool(_CODE_VALUE.match(str(value or "").strip()))


def is_safe_word(token: str, *, after_safe_word: bool = False) -> bool:
    """True for a vocabulary word, a short number with a unit, or (after a kept word) a bare short number."""
    t = token.upper()
    if t in SAFE_WORDS or _NUMBER_WITH_UNIT.match(t):
        return True
    return after_safe_word and bool(_BARE_NUMBER.match(t))


def clean_text(value: str) -> str:
    """Keep only safe-vocabulary words and short numbers of ``value`` (see module docstring)."""
    if not value:
        return ""
    text = _LONG_DIGITS.sub(" ", _DATE_LIKE.sub(" ", str(value)))
    out: list[str] = []
    pending_sep = ""
    prev_kept = False
    for tok in _TOKEN.findall(text):
        if tok[0].isalnum():
            prev_kept_now = is_safe_word(tok, after_safe_word=prev_kept)
            if prev_kept_now:
                if out and pending_sep:
                    out.append(pending_sep)
                out.append(tok)
            prev_kept = prev_kept_now
            pending_sep = ""
        elif tok in _SEPARATORS and not pending_sep:
            pending_sep = tok
    return "".join(out).strip()
