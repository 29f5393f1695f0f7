"""Setup: choose the pretrained backbone and the target dataset; shows the loaded backbone's layer table."""
import streamlit as st
import torch

import plasticity_core as pc
from dashboard import forms, state
from plasticity_core import samples

st.title("Setup")
st.caption("A pretrained backbone and the target dataset you want to fine-tune it on. The offline default "
           "(bundled MobileNetV2 + animal silhouettes at 64 px) works without any network.")
setup = st.session_state["setup"]

left, right = st.columns(2)
with left:
    st.subheader("Backbone")
    backbone, arch = forms.backbone_picker(setup)
    h1, h2, h3 = st.columns([2, 1, 1])
    pretrained = h1.checkbox("Pretrained weights", value=setup["pretrained"], key="w_pretrained")
    probe_steps = h3.number_input("Head probe steps", 0, 100_000, int(setup.get("head_probe_steps", 0)), step=25,
                                  key="w_head_probe",
                                  help="Train only the fresh head for this many steps (Adam, seeded by the head seed) "
                                       "before gradient metrics and gradient-scored re-inits, so they measure the "
                                       "backbone through a head that has seen the task. 0: the untrained head. "
                                       "Measured on the bundled data (experiments/head_probe.py): it did not make "
                                       "the recommendation more stable across head seeds, so it is off by default.")
    head_seed = h2.number_input("Head seed", 0, 2**31 - 1, state.head_seed(setup), key="w_head_seed",
                                help="The fresh classifier head for the target classes is drawn from this seed; the "
                                     "gradient metrics and gradient-scored re-inits go through it. Exports and the CLI "
                                     "command carry it, so they reproduce this session exactly.")
with right:
    st.subheader("Target dataset")
    data = forms.dataset_picker(setup)
    c1, c2, c3 = st.columns(3)
    image_size = c1.number_input("Image size (px)", 16, 512, int(setup["image_size"]), step=8, key="w_image_size")
    limit = c2.number_input("Data limit (0 = all)", 0, 10_000_000, int(setup["limit"]), step=100, key="w_limit",
                            help="Keep a stratified subset of at most this many images (fast demos and tests).")
    options = state.devices()
    device = c3.selectbox("Device", options, index=options.index(setup["device"]) if setup["device"] in options else 0,
                          key="w_device")
    st.caption(f"CUDA available: {'yes, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")

chosen = dict(backbone=backbone, arch=arch, pretrained=pretrained, data=data, image_size=int(image_size),
              limit=int(limit), device=device, head_seed=int(head_seed), head_probe_steps=int(probe_steps))
first_visit = "loaded_setup" not in st.session_state and "setup_error" not in st.session_state
if st.button("Load", type="primary", key="btn_load") or first_visit:
    st.session_state["setup"] = chosen if not first_visit else setup
    with st.status("Loading…", expanded=False) as status:
        try:
            result = state.load(st.session_state["setup"], step=status.write)
        except forms.errors() as e:
            st.session_state["setup_error"] = state.message(e)
            status.update(label="Loading failed", state="error")
        else:
            state.commit_loaded(result)
            st.session_state.pop("setup_error", None)
            status.update(label="Loaded", state="complete")
            st.rerun()  # so that the sidebar (drawn before the page) names what is loaded now

if "setup_error" in st.session_state:
    st.error(st.session_state["setup_error"])

current = state.loaded()
if current is None:
    st.info("Nothing loaded yet: pick a backbone and a dataset, then press Load.")
    st.stop()

st.divider()
bb, dat = current.backbone, current.data
table = pc.layer_table(current.model)
m = st.columns([2.2, 1, 1, 1, 1.4])
m[0].metric("Backbone", f"{bb.name}", help=f"{current.setup['backbone']} ({'pretrained' if bb.pretrained else 'random init'})")
m[1].metric("Weight layers", len(table))
m[2].metric("Parameters", f"{sum(p.numel() for p in current.model.parameters()) / 1e6:.2f} M")
m[3].metric("Classes", dat.num_classes, help=", ".join(dat.classes))
m[4].metric("Train / val images", f"{dat.info['train']} / {dat.info['val']}")
if dat.info.get("skipped"):
    st.warning(f"Skipped image files: {dat.info['skipped']}", icon=":material/warning:")
if bb.head_seed is not None:
    probe = bb.head_probe
    st.caption(f"Fresh {bb.num_classes}-class head drawn from seed {bb.head_seed}, "
               + (f"linear-probed for {probe['steps']} steps (last train accuracy {probe['last_acc']:.0%})."
                  if probe else "untrained (gradient metrics see it as a random projection)."))
if table.attrs.get("uncovered"):
    st.warning("Not in the layer map (not measured, not re-initialised): "
               + "; ".join(f"`{n}`: {why}" for n, why in table.attrs["uncovered"][:12])
               + (f"; and {len(table.attrs['uncovered']) - 12} more" if len(table.attrs["uncovered"]) > 12 else ""),
               icon=":material/warning:")
tied = table[table["aliases"] != ""]
if len(tied):
    st.caption("Tied weights (one layer under several names; changing it changes all): "
               + "; ".join(f"`{r.name}` = `{r.aliases}`" for r in tied.itertuples()))
st.subheader("Layers in network order")
st.dataframe(table[["name", "kind", "shape", "params", "units", "group", "act_type", "norm", "depthwise", "head"]],
             hide_index=True, height=360, key="setup_layers")

# --- The target data: per-class counts and a seeded sample of images per class (plasticity_core.samples) ----------
st.subheader("Target data")
counts = samples.class_counts(dat)
grid = samples.sample_images(dat, per_class=8, seed=0)
left, right = st.columns([3, 2])
with left:
    st.caption(f"8 training images per class, as the model sees them ({dat.image_size} px, a seeded draw).")
    for cls, images in grid.items():
        c1, c2 = st.columns([1, 5])
        n = counts.loc[counts["class"] == cls, ["train", "val"]].iloc[0]
        c1.markdown(f"**{cls}**  \n<small>{n['train']} train · {n['val']} val</small>", unsafe_allow_html=True)
        if images:
            c2.image(images, width=48)
        else:
            c2.caption("no training image of this class")
with right:
    st.caption("Images per class in each split.")
    st.bar_chart(counts.set_index("class")[["train", "val"]], horizontal=True, stack=True, height=320)
    st.dataframe(counts, hide_index=True, key="setup_class_counts")
    if counts["train"].min() == 0 or counts["val"].min() == 0:
        st.warning("Some classes have no image in a split: " + ", ".join(
            counts.loc[(counts["train"] == 0) | (counts["val"] == 0), "class"]) + ".")
