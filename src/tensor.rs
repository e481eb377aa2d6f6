//! A plain dense tensor: a shape and its elements in row-major (C) order, as PyTorch lays out a
//! contiguous tensor. Activations are NCHW, weights use PyTorch's layouts (`[out, in, kh, kw]`
//! for convolutions, `[out, in]` for dense layers). The runtime computes in `f32`; the reference
//! interpreter in `f64`.

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T = f32> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Copy + Default> Tensor<T> {
    pub fn zeros(shape: &[usize]) -> Tensor<T> {
        Tensor {
            shape: shape.to_vec(),
            data: vec![T::default(); shape.iter().product()],
        }
    }

    /// A tensor from a shape and data whose length must match it.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Option<Tensor<T>> {
        (shape.iter().product::<usize>() == data.len()).then(|| Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn element_count(&self) -> usize {
        self.data.len()
    }
}

impl Tensor<f32> {
    pub fn to_f64(&self) -> Tensor<f64> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&value| value as f64).collect(),
        }
    }
}

impl Tensor<f64> {
    pub fn to_f32(&self) -> Tensor<f32> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&value| value as f32).collect(),
        }
    }
}
