from __future__ import print_function
from hyperopt import Trials, STATUS_OK, rand
from tuning import optim  # port: the one import changed
from hyperas.distributions import uniform, choice
import numpy as np
from keras.preprocessing import sequence
from offline import imdb  # port: local data, no download
from keras.models import Sequential
from keras.layers import Dense, Dropout, Activation  # port: Keras 3 module
from keras.layers import Embedding  # port: Keras 3 module
from keras.layers import LSTM  # port: Keras 3 module
from keras.layers import Conv1D as Convolution1D, MaxPooling1D  # port: Keras 3 names


def data():
    np.random.seed(1337)  # for reproducibility
    max_features = 20000
    maxlen = 100

    (X_train, y_train), (X_test, y_test) = imdb.load_data(num_words=max_features)  # port: Keras 3 name
    X_train = sequence.pad_sequences(X_train, maxlen=maxlen)
    X_test = sequence.pad_sequences(X_test, maxlen=maxlen)

    return X_train, X_test, y_train, y_test, maxlen, max_features


def model(X_train, X_test, y_train, y_test, maxlen, max_features):
    embedding_size = 16  # port: tiny CI run
    pool_length = 4
    lstm_output_size = 8  # port: tiny CI run
    batch_size = 200
    nb_epoch = 1

    model = Sequential()
    model.add(Embedding(max_features, embedding_size))  # port: Keras 3 has no input_length
    model.add(Dropout({{uniform(0, 1)}}))
    # Note that we use unnamed parameters here, which is bad style, but is used here
    # to demonstrate that it works. Always prefer named parameters.
    model.add(Convolution1D({{choice([64, 128])}},
                            {{choice([6, 8])}},
                            padding='valid',  # port: Keras 3 name
                            activation='relu',
                            strides=1))  # port: Keras 3 name
    model.add(MaxPooling1D(pool_size=pool_length))  # port: Keras 3 name
    model.add(LSTM(lstm_output_size))
    model.add(Dense(1))
    model.add(Activation('sigmoid'))

    model.compile(loss='binary_crossentropy',
                  optimizer='adam',
                  metrics=['accuracy'])

    print('Train...')
    model.fit(X_train, y_train, batch_size=batch_size, epochs=nb_epoch,  # port: Keras 3 name
              validation_data=(X_test, y_test))
    score, acc = model.evaluate(X_test, y_test, batch_size=batch_size)

    print('Test score:', score)
    print('Test accuracy:', acc)
    return {'loss': -acc, 'status': STATUS_OK, 'model': model}

if __name__ == '__main__':
    best_run, best_model = optim.minimize(model=model,
                                          data=data,
                                          algo=rand.suggest,
                                          max_evals=3,  # port: tiny CI run
                                          trials=Trials())
    print(best_run)
