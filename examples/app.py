"""A Streamlit app that serves the model trained by the train workflow."""

import json
import math

import streamlit as st

model = json.load(open("checkpoint/model.json"))
w = model["weights"]
st.title("dstack example: two-blob classifier")
st.write(f"Trained for {model['epoch']} epochs, accuracy {model['accuracy']:.3f}")
x1 = st.slider("x1", -4.0, 4.0, 0.0)
x2 = st.slider("x2", -4.0, 4.0, 0.0)
p = 1 / (1 + math.exp(-(w[0] + w[1] * x1 + w[2] * x2)))
st.metric("P(class 1)", f"{p:.3f}")
